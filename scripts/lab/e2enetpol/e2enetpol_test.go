// Package e2enetpol is upstream Kubernetes' e2e suite reduced to its NetworkPolicy specs:
// scripts/lab/build.sh compiles it with `go test -c` into e2e-netpol.test, which
// scripts/lab/ci-conformance.sh and scripts/lab/conformance.sh run instead of the whole
// e2e.test (compiling every e2e spec package took about 19 minutes of a fresh machine's
// build; the NetworkPolicy specs are all those scripts select).
//
// Only the set of linked spec packages differs from upstream's test/e2e/e2e_test.go: the
// suite itself is upstream's (k8s.io/kubernetes/test/e2e: RunE2ETests, its
// SynchronizedBeforeSuite checks of the cluster and AfterSuite), the specs are
// k8s.io/kubernetes/test/e2e/network/netpol unmodified, and flags are registered and parsed
// the way upstream's TestMain does, with the same framework reconfiguration imports.
// Left out: upstream's progress and spec-summary reporters (only active with
// --progress-report-url or --spec-dump, which nothing here passes) and
// --list-conformance-tests.
package e2enetpol

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"k8s.io/component-base/version"
	conformancetestdata "k8s.io/kubernetes/test/conformance/testdata"
	"k8s.io/kubernetes/test/e2e"
	"k8s.io/kubernetes/test/e2e/framework"
	"k8s.io/kubernetes/test/e2e/framework/config"
	"k8s.io/kubernetes/test/e2e/framework/testfiles"
	"k8s.io/kubernetes/test/e2e/invariants/logcheck"
	e2etestingmanifests "k8s.io/kubernetes/test/e2e/testing-manifests"
	testfixtures "k8s.io/kubernetes/test/fixtures"

	// The feature and label constants, defined before any spec registers.
	_ "k8s.io/kubernetes/test/e2e/feature"

	// The specs: every NetworkPolicy spec of the Kubernetes version built.
	_ "k8s.io/kubernetes/test/e2e/network/netpol"

	// Upstream's suite-level invariant check (its sentinel spec selects it), as in e2e.test.
	_ "k8s.io/kubernetes/test/e2e/invariants"

	// Framework reconfiguration, as in upstream's e2e.test.
	_ "k8s.io/kubernetes/test/e2e/framework/debug/init"
	_ "k8s.io/kubernetes/test/e2e/framework/metrics/init"
	_ "k8s.io/kubernetes/test/e2e/framework/node/init"
	_ "k8s.io/kubernetes/test/utils/ktesting/format"
)

func TestMain(m *testing.M) {
	showVersion := flag.CommandLine.Bool("version", false, "Displays version information.")
	config.CopyFlags(config.Flags, flag.CommandLine)
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	logcheck.RegisterFlags(flag.CommandLine)
	flag.Parse()
	if *showVersion {
		fmt.Println(version.Get())
		os.Exit(0)
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unexpected arguments: %v\n", flag.Args())
		os.Exit(1)
	}
	// Manifests and fixtures the framework reads come from the binary (no repo checkout).
	testfiles.AddFileSource(e2etestingmanifests.GetE2ETestingManifestsFS())
	testfiles.AddFileSource(testfixtures.GetTestFixturesFS())
	testfiles.AddFileSource(conformancetestdata.GetConformanceTestdataFS())
	framework.AfterReadingAllFlags(&framework.TestContext)
	if framework.TestContext.RepoRoot != "" {
		testfiles.AddFileSource(testfiles.RootFileSource{Root: framework.TestContext.RepoRoot})
	}
	os.Exit(m.Run())
}

func TestE2E(t *testing.T) {
	e2e.RunE2ETests(t)
}

package main

// Guards of the CNI path's start-up cost. Every pod start execs this binary as
// patronus-cni, and Go runs every linked package's init before main dispatches, so what
// the agent and the CLI link is paid on every CNI call (BENCHMARKS.md, "CNI plugin").
// These tests count, they do not time: the counts below are exact for a given build and
// fail when a change links something heavy or makes one of our packages do work at init.

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/patronus/patronus/cni"
	"github.com/patronus/patronus/internal/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// Budgets of the whole binary's package init, measured on the build of 2026-11-27 after
// the agent stopped linking client-go's typed clientset, informer factories,
// leaderelection and tools/record: 244 inits, 936-975 KB allocated (k8s.io/client-go/features
// allocates 9,800 or 46,840 bytes from one run to the next); 327 and 2,256,464 before,
// 330 and 2,389,080 before knftables went. ~7 % headroom. Raising them means every CNI ADD
// pays for it: say so in BENCHMARKS.md.
const (
	maxInits     = 260
	maxInitBytes = 1_050_000
	// maxOwnInitBytes bounds what one of this module's packages may allocate at init:
	// package-level regexps, tables and clients belong in constructors or sync.OnceValue.
	maxOwnInitBytes = 4 << 10
	// maxCNIDeps bounds the packages the plugin's own code links (246 today).
	maxCNIDeps = 260
)

// goList returns `go list -deps` of the packages.
func goList(t *testing.T, pkgs ...string) []string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("go tool not in PATH: %v", err)
	}
	out, err := exec.Command("go", append([]string{"list", "-deps"}, pkgs...)...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps %s: %v\n%s", strings.Join(pkgs, " "), err, stderr)
	}
	return strings.Fields(string(out))
}

// TestCNIPackageLinksNoAgentStack keeps the plugin's own code free of what makes the
// agent's start-up expensive: if cni/ (or dataplane/link, store, localapi under it)
// imports one of these, the cost is paid even by a plugin-only build.
func TestCNIPackageLinksNoAgentStack(t *testing.T) {
	denied := []string{
		"k8s.io/",                    // API machinery: schemes registered at init
		"sigs.k8s.io/",               // structured-merge-diff, mcs-api, knftables
		"github.com/prometheus/",     // default registry + Go/process collectors at init
		"github.com/hashicorp/",      // memberlist/serf: net/rpc, encoding/gob, html/template
		"github.com/cilium/ebpf",     // BTF and feature probes
		"google.golang.org/protobuf", // descriptor registries
		"golang.zx2c4.com/",          // WireGuard
		"encoding/gob",
		"net/rpc",
		"html/template",
		"expvar",
	}
	deps := goList(t, "github.com/patronus/patronus/cni")
	var bad []string
	for _, d := range deps {
		for _, p := range denied {
			if strings.HasPrefix(d, p) {
				bad = append(bad, d)
			}
		}
	}
	if len(bad) > 0 {
		t.Errorf("the cni package links %d packages of the agent's stack (each runs its init on every CNI call): %s",
			len(bad), strings.Join(bad, ", "))
	}
	if len(deps) > maxCNIDeps {
		t.Errorf("the cni package links %d packages, budget %d: what was added, and is it needed on the ADD path?", len(deps), maxCNIDeps)
	}
}

// removedFromBinary were linked only for a small helper and removed; they must not come
// back through another import (each ran work at init on every CNI call). Each entry
// also forbids the packages under it.
var removedFromBinary = []string{
	// containernetworking/plugins/pkg/ip (host-local's allocator, pkg/ipam) linked
	// knftables: eleven regexps compiled at init, 0.26-0.34 ms per call. cni/hostlocal.go
	// allocates on host-local's on-disk store without them.
	"sigs.k8s.io/knftables",
	"github.com/containernetworking/plugins/pkg/ip",
	"github.com/containernetworking/plugins/pkg/ipam",
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator",
	"github.com/coreos/go-iptables/iptables",
	"github.com/safchain/ethtool",

	// client-go's typed clientset registers every API group in one scheme at init (3.5 ms,
	// 0.66 MB), and brings apply configurations (structured-merge-diff's typed schema),
	// discovery (gnostic OpenAPI models, protobuf descriptors), the informer factories and
	// leaderelection (whose Lease lock imports the clientset); tools/record links
	// strategic merge patch and kube-openapi. The agent uses package kube/kclient instead
	// (a private scheme built at agent start) and kube's own Lease election and Event
	// poster.
	"k8s.io/client-go/kubernetes",
	"k8s.io/client-go/informers",
	"k8s.io/client-go/applyconfigurations",
	"k8s.io/client-go/discovery",
	"k8s.io/client-go/gentype",
	"k8s.io/client-go/tools/leaderelection",
	"k8s.io/client-go/tools/record",
	"k8s.io/client-go/openapi",
	"sigs.k8s.io/mcs-api/pkg/client/clientset",
	"sigs.k8s.io/mcs-api/pkg/client/informers",
	"sigs.k8s.io/structured-merge-diff/v6/typed",
	"k8s.io/apimachinery/pkg/util/strategicpatch",
	"k8s.io/kube-openapi/pkg/util/proto",
	"github.com/google/gnostic-models",
	"google.golang.org/protobuf/types/descriptorpb",
}

// TestBinaryLinksNoTestCodeNorRemovedPackages: test helpers must never end up in the shipped binary, nor
// the packages removed from the CNI path.
func TestBinaryLinksNoTestCodeNorRemovedPackages(t *testing.T) {
	for _, d := range goList(t, "github.com/patronus/patronus") {
		for _, r := range removedFromBinary {
			if d == r || strings.HasPrefix(d, r+"/") {
				t.Errorf("the patronus binary links %s again (removed from the CNI path: see removedFromBinary)", d)
			}
		}
		if d == "testing" || strings.Contains(d, "/integration/") || strings.HasSuffix(d, "/internal/testbin") ||
			strings.HasSuffix(d, "test") && strings.HasPrefix(d, "github.com/patronus/") ||
			strings.HasSuffix(d, "/fake") {
			t.Errorf("the patronus binary links test code: %s", d)
		}
	}
}

// initRecord is one line of GODEBUG=inittrace=1.
type initRecord struct {
	pkg   string
	bytes int
}

// parseInitTrace reads "init <pkg> @<t> ms, <clock> ms clock, <bytes> bytes, <n> allocs".
func parseInitTrace(out []byte) ([]initRecord, error) {
	var recs []initRecord
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 11 || f[0] != "init" || f[8] != "bytes," {
			continue
		}
		n, err := strconv.Atoi(f[7])
		if err != nil {
			return nil, err
		}
		recs = append(recs, initRecord{pkg: f[1], bytes: n})
	}
	return recs, sc.Err()
}

func TestParseInitTrace(t *testing.T) {
	out := []byte("init internal/bytealg @0.003 ms, 0 ms clock, 0 bytes, 0 allocs\n" +
		"init k8s.io/client-go/kubernetes/scheme @9.1 ms, 2.7 ms clock, 664640 bytes, 7125 allocs\n" +
		"patronus 1.0\n")
	recs, err := parseInitTrace(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []initRecord{{"internal/bytealg", 0}, {"k8s.io/client-go/kubernetes/scheme", 664640}}
	if len(recs) != len(want) || recs[0] != want[0] || recs[1] != want[1] {
		t.Fatalf("parsed %v, want %v", recs, want)
	}
}

// TestCNIInitBudget runs the binary exactly as a runtime does (argv[0] patronus-cni,
// CNI_COMMAND=VERSION) with the runtime's init trace and checks the counts.
func TestCNIInitBudget(t *testing.T) {
	bin := testbin.Patronus(t)
	dir := t.TempDir()
	plugin := filepath.Join(dir, cni.PluginName)
	if err := os.Symlink(bin, plugin); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(plugin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION", "GODEBUG=inittrace=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s VERSION: %v\n%s", plugin, err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "supportedVersions") {
		t.Fatalf("VERSION did not answer as the CNI plugin: %q", stdout.String())
	}
	recs, err := parseInitTrace(stderr.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) < 50 {
		t.Fatalf("only %d init records: was GODEBUG=inittrace=1 honoured?\n%s", len(recs), stderr.String())
	}
	total := 0
	for _, r := range recs {
		total += r.bytes
		if strings.HasPrefix(r.pkg, "github.com/patronus/patronus") && r.bytes > maxOwnInitBytes {
			t.Errorf("package %s allocates %d bytes at init (budget %d): build it on first use instead", r.pkg, r.bytes, maxOwnInitBytes)
		}
	}
	t.Logf("%d package inits, %d bytes allocated at init", len(recs), total)
	if len(recs) > maxInits {
		t.Errorf("%d package inits run on every CNI call, budget %d", len(recs), maxInits)
	}
	if total > maxInitBytes {
		t.Errorf("package inits allocate %d bytes on every CNI call, budget %d", total, maxInitBytes)
	}
}

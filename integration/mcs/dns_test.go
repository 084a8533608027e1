package mcs_test

// DNS for Multi-Cluster Services, tested against the component clusters run: the CoreDNS
// the lab builds (scripts/lab/build.sh coredns), configured with the lab's own manifest
// (scripts/lab/coredns.yaml: ServiceAccount, RBAC and the Corefile of its ConfigMap, as
// applied to the cluster), connected to cluster east's API server with that
// ServiceAccount's token, answering <svc>.<ns>.svc.clusterset.local from the
// ServiceImports and EndpointSlices the MCS controllers write after exports in west (and
// east), carried by the real mesh.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/internal/testbin"
)

// corednsBinary is $PATRONUS_COREDNS, or the lab's CoreDNS (scripts/lab/build.sh, cached):
// stock CoreDNS, whose kubernetes plugin's multicluster option serves clusterset.local.
func corednsBinary(t *testing.T) string { return testbin.Lab(t, "coredns", "PATRONUS_COREDNS") }

// freePort returns a port free for both UDP and TCP on addr (CoreDNS listens on both).
func freePort(t *testing.T, addr string) int {
	t.Helper()
	for range 20 {
		u, err := net.ListenPacket("udp4", net.JoinHostPort(addr, "0"))
		if err != nil {
			t.Fatal(err)
		}
		p := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp4", net.JoinHostPort(addr, fmt.Sprint(p)))
		u.Close()
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// labCorefile applies scripts/lab/coredns.yaml to c as lab.sh does and returns the Corefile
// of the ConfigMap it created, plus a kubeconfig with the coredns ServiceAccount's token.
func labCorefile(t *testing.T, c *k8senv.Cluster) (corefile, kubeconfig string) {
	t.Helper()
	root, err := k8senv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "scripts/lab/coredns.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(t.TempDir(), "coredns.yaml")
	if err := os.WriteFile(manifest, []byte(strings.ReplaceAll(string(b), "@DNS_SVC@", "10.96.0.10")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl("apply", "-f", manifest); err != nil {
		t.Fatalf("kubectl apply scripts/lab/coredns.yaml: %v: %s", err, out)
	}
	cm, err := c.Client().CoreV1().ConfigMaps("kube-system").Get(bg, "coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, kubeconfig, err = c.ServiceAccountKubeconfig(bg, "kube-system", "coredns")
	if err != nil {
		t.Fatal(err)
	}
	return cm.Data["Corefile"], kubeconfig
}

// localize rewrites a cluster Corefile for a process on this host: the server listens on
// addr:port only, health and ready on their own free ports of addr, and the kubernetes
// plugin connects with kubeconfig (in a pod it uses the in-cluster service account). Every
// other line is kept: what is tested is the lab's configuration.
func localize(t *testing.T, corefile, addr string, port int, kubeconfig string) (conf, readyURL string) {
	t.Helper()
	rules := []struct {
		re   *regexp.Regexp
		repl string
	}{
		{regexp.MustCompile(`(?m)^(\s*)\.:53 \{$`), fmt.Sprintf("${1}.:%d {\n${1}    bind %s", port, addr)},
		{regexp.MustCompile(`(?m)^(\s*)health \{$`), fmt.Sprintf("${1}health %s:%d {", addr, freePort(t, addr))},
		{regexp.MustCompile(`(?m)^(\s*)kubernetes (.*)\{$`), "${1}kubernetes ${2}{\n${1}    kubeconfig " + kubeconfig},
	}
	readyPort := freePort(t, addr)
	rules = append(rules, struct {
		re   *regexp.Regexp
		repl string
	}{regexp.MustCompile(`(?m)^(\s*)ready$`), fmt.Sprintf("${1}ready %s:%d", addr, readyPort)})
	for _, r := range rules {
		if !r.re.MatchString(corefile) {
			t.Fatalf("the lab's Corefile has no line matching %s:\n%s", r.re, corefile)
		}
		corefile = r.re.ReplaceAllString(corefile, r.repl)
	}
	return corefile, fmt.Sprintf("http://%s:%d/ready", addr, readyPort)
}

// startCoreDNS runs the CoreDNS binary with conf until the test ends and waits until its
// ready plugin says the kubernetes plugin has synced.
func startCoreDNS(t *testing.T, bin, conf, readyURL string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "coredns.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-conf", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("CoreDNS log:\n%s\nCorefile:\n%s", b, conf)
		}
	})
	eventually(t, 30*time.Second, "CoreDNS ready", func() error {
		select {
		case err := <-exited:
			exited <- err
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("CoreDNS exited: %v\n%s", err, b)
		default:
		}
		resp, err := http.Get(readyURL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", readyURL, resp.Status)
		}
		return nil
	})
}

// lookup asks the DNS server at server for name's IPv4 addresses, sorted; NXDOMAIN is
// "NXDOMAIN".
func lookup(server, name string) (string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", server)
	}}
	ctx, cancel := context.WithTimeout(bg, 2*time.Second)
	defer cancel()
	ips, err := r.LookupNetIP(ctx, "ip4", name)
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		return "NXDOMAIN", nil
	}
	if err != nil {
		return "", err
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	var out []string
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	return strings.Join(out, ","), nil
}

func wantDNS(server, name, want string) func() error {
	return func() error {
		got, err := lookup(server, name)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("%s: %s, want %s", name, got, want)
		}
		return nil
	}
}

func TestClusterSetDNS(t *testing.T) {
	bin := corednsBinary(t)
	e := newEnv(t)
	east, west := e.sites[0], e.sites[1]

	corefile, kubeconfig := labCorefile(t, east.k8s)
	addr := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), 1+rand.IntN(250), 2+rand.IntN(250))
	port := freePort(t, addr)
	conf, readyURL := localize(t, corefile, addr, port, kubeconfig)
	startCoreDNS(t, bin, conf, readyURL)
	server := net.JoinHostPort(addr, fmt.Sprint(port))

	web80 := port2("http", 80)
	pg := port2("pg", 5432)
	// web: ClusterSetIP, exported by west only.
	west.service(t, "web", false, "", web80)
	west.endpoints(t, "web", map[string]bool{"10.245.1.5": true}, web80)
	west.export(t, "web")
	// db: Headless, exported by both; one of west's endpoints is not ready.
	west.service(t, "db", true, "", pg)
	west.endpoints(t, "db", map[string]bool{"10.245.3.1": true, "10.245.3.2": false}, pg)
	west.export(t, "db")
	east.service(t, "db", true, "", pg)
	east.endpoints(t, "db", map[string]bool{"10.244.3.1": true}, pg)
	east.export(t, "db")

	var vip string
	eventually(t, 20*time.Second, "web imported in east with a ClusterSetIP", func() error {
		si, err := east.imp("web")
		if err != nil {
			return err
		}
		if len(si.Spec.IPs) != 1 {
			return fmt.Errorf("ips %v", si.Spec.IPs)
		}
		vip = si.Spec.IPs[0]
		return nil
	})
	// Both clusters' db slices exist before the first query (the Corefile's cache would
	// keep a partial answer for 30 s). East's own endpoints are there too: for a Headless
	// import DNS reads only the MCS-labelled slices.
	eventually(t, 20*time.Second, "db slices of east and west in east", func() error {
		sls, err := east.importedSlices("db")
		if err != nil {
			return err
		}
		if sliceAddrs(sls["east"]) != "10.244.3.1(true)" || sliceAddrs(sls["west"]) != "10.245.3.1(true),10.245.3.2(false)" {
			return fmt.Errorf("slices %v", sls)
		}
		return nil
	})
	d := eventually(t, 20*time.Second, "web.shop.svc.clusterset.local -> ClusterSetIP", wantDNS(server, "web.shop.svc.clusterset.local.", vip))
	t.Logf("ClusterSetIP %s resolvable %v after the import existed", vip, d.Round(time.Millisecond))
	eventually(t, 20*time.Second, "db.shop.svc.clusterset.local -> ready endpoints of both clusters",
		wantDNS(server, "db.shop.svc.clusterset.local.", "10.244.3.1,10.245.3.1"))
	for name, want := range map[string]string{
		"nothere.shop.svc.clusterset.local.": "NXDOMAIN",
		"web.shop.svc.cluster.local.":        "NXDOMAIN",   // not a Service of east
		"db.shop.svc.cluster.local.":         "10.244.3.1", // cluster names still served
	} {
		eventually(t, 5*time.Second, name, wantDNS(server, name, want))
	}

	// West's other endpoint turns ready: the headless answer follows (the Corefile's cache
	// keeps the old answer up to its 30 s).
	west.endpoints(t, "db", map[string]bool{"10.245.3.1": true, "10.245.3.2": true}, pg)
	d = eventually(t, 45*time.Second, "db answer with west's second endpoint",
		wantDNS(server, "db.shop.svc.clusterset.local.", "10.244.3.1,10.245.3.1,10.245.3.2"))
	t.Logf("headless endpoint change visible in DNS after %v (cache 30)", d.Round(time.Millisecond))

	// Unexport: the name goes away.
	west.unexport(t, "web")
	d = eventually(t, 45*time.Second, "web.shop.svc.clusterset.local gone after unexport",
		wantDNS(server, "web.shop.svc.clusterset.local.", "NXDOMAIN"))
	t.Logf("unexported name NXDOMAIN after %v (cache 30)", d.Round(time.Millisecond))
}

func port2(name string, n int32) port { return port{name, n, corev1.ProtocolTCP} }

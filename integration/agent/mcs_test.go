package agent_test

// One gateway agent (the built binary, in a network namespace of its own, with the
// shipped manifests and the patronus ServiceAccount) and the MCS CRDs: the agent wires
// the MCS controller to its mesh node and the ClusterSetIP datapath to its namespace's
// nftables. A Service with an EndpointSlice and a ServiceExport becomes a valid export,
// a ServiceImport with a ClusterSetIP from the default clusterset-ip-range, and a DNAT
// rule for that VIP in the agent's namespace.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/internal/testbin"
	"github.com/patronus/patronus/localapi"
)

func TestGatewayAgentRunsMCS(t *testing.T) {
	l, c := newMeshLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.InstallMCSCRDs(ctx); err != nil {
		t.Fatal(err)
	}
	mc, err := mcsclient.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	k := c.Client()
	const ns, name = "default", "web"
	proto, ready := corev1.ProtocolTCP, true
	if _, err := k.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: proto, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	portName, port := "http", int32(8080)
	if _, err := k.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-abc", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &port}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := mc.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, &mcsv1beta1.ServiceExport{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	a := l.addAgent(1)

	waitFor(t, 90*time.Second, "the ServiceExport is Valid", func() error {
		if err := a.alive(); err != nil {
			return err
		}
		se, err := mc.MulticlusterV1beta1().ServiceExports(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cond := meta.FindStatusCondition(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionValid))
		if cond == nil || cond.Status != metav1.ConditionTrue {
			return fmt.Errorf("Valid condition %+v", cond)
		}
		return nil
	})

	var vip netip.Addr
	rng := netip.MustParsePrefix("10.112.0.0/16")
	waitFor(t, 60*time.Second, "a ServiceImport with a ClusterSetIP from 10.112.0.0/16", func() error {
		si, err := mc.MulticlusterV1beta1().ServiceImports(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("no ServiceImport yet")
		}
		if err != nil {
			return err
		}
		if si.Labels["app.kubernetes.io/managed-by"] != "patronus" || si.Spec.Type != mcsv1beta1.ClusterSetIP || len(si.Spec.IPs) != 1 {
			return fmt.Errorf("ServiceImport labels %v type %q ips %v", si.Labels, si.Spec.Type, si.Spec.IPs)
		}
		ip, err := netip.ParseAddr(si.Spec.IPs[0])
		if err != nil || !rng.Contains(ip) {
			return fmt.Errorf("ClusterSetIP %q not in %s", si.Spec.IPs[0], rng)
		}
		if len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 80 {
			return fmt.Errorf("ports %+v, want 80", si.Spec.Ports)
		}
		vip = ip
		return nil
	})

	// The agent's status says it leads and sees the export and the import.
	waitFor(t, 30*time.Second, "status shows MCS leader with 1 export and 1 import", func() error {
		out, err := l.cliStdout("status", "--socket", a.socket, "--database", a.db, "-o", "json")
		var st struct {
			Agent struct {
				Live struct {
					MCS struct {
						Available                      bool
						ServiceExports, ServiceImports int
						Controller                     string
						Leader                         bool
					}
				}
			}
		}
		if jerr := json.Unmarshal([]byte(out), &st); jerr != nil {
			return fmt.Errorf("status -o json: %v (%v): %s", jerr, err, out)
		}
		m := st.Agent.Live.MCS
		if !m.Available || !m.Leader || m.ServiceExports != 1 || m.ServiceImports != 1 ||
			!strings.Contains(m.Controller, "controller running") || !strings.Contains(m.Controller, "datapath running") {
			return fmt.Errorf("MCS status %+v", m)
		}
		return nil
	})

	out, _ := l.cli("status", "--socket", a.socket, "--database", a.db)
	if !strings.Contains(out, "MCS: 1 ServiceExports, 1 ServiceImports, this agent leads; controller running") {
		t.Errorf("patronus status lacks the MCS line:\n%s", out)
	}

	// The ClusterSetIP datapath DNATs the VIP to the local endpoint in the agent's namespace.
	if _, err := exec.LookPath("nft"); err != nil {
		t.Logf("nft not installed: the nftables rules of the VIP are not inspected (the datapath package's own tests do)")
		return
	}
	waitFor(t, 30*time.Second, "nftables DNAT for the ClusterSetIP in the agent's namespace", func() error {
		out, err := exec.Command("ip", "netns", "exec", a.ns, "nft", "list", "table", "inet", "patronus").CombinedOutput()
		s := string(out)
		if err != nil {
			return fmt.Errorf("nft list table: %v: %s", err, s)
		}
		if !strings.Contains(s, "mcs-prerouting") || !strings.Contains(s, vip.String()) || !strings.Contains(s, "10.244.1.5") {
			return fmt.Errorf("table inet patronus lacks the VIP %s or its endpoint:\n%s", vip, s)
		}
		return nil
	})
}

// On a node that is not a gateway (another Node is marked) the agent runs the ClusterSetIP
// datapath at once and no controller, and says why.
func TestNonGatewayAgentRunsMCSDatapathOnly(t *testing.T) {
	l, c := newMeshLab(t)
	ctx := context.Background()
	for name, labels := range map[string]map[string]string{"gw-1": {"patronus.io/gateway": "true"}, "gw-2": nil} {
		if _, err := c.Client().CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a2 := l.addAgent(2)
	start := time.Now()
	waitFor(t, 30*time.Second, "gw-2 reports the datapath running and the controller off", func() error {
		if err := a2.alive(); err != nil {
			return err
		}
		out, _ := l.cli("status", "--socket", a2.socket, "--database", a2.db)
		if !strings.Contains(out, "MCS: 0 ServiceExports, 0 ServiceImports; controller off: the mesh does not run on this agent") ||
			!strings.Contains(out, "datapath running") {
			return fmt.Errorf("status:\n%s", out)
		}
		return nil
	})
	t.Logf("MCS datapath up on the non-gateway agent %v after it started", time.Since(start).Round(time.Second))
}

// serveName answers every TCP connection on addr:port inside the namespace at nsPath with
// name (which endpoint a ClusterSetIP connection reached).
func serveName(t *testing.T, nsPath string, addr netip.Addr, port int, name string) {
	t.Helper()
	serveTCP(t, nsPath, addr, port, func(net.Conn) string { return name })
}

// dialVIP connects n times from the pod to vip:80 and counts who answered ("error" for a
// failed connection or an empty answer).
func dialVIP(from cniPod, vip netip.Addr, n int) map[string]int {
	out := map[string]int{}
	for range n {
		got, err := dialEchoTimeout(from.netns, vip, 80, time.Second)
		if err != nil || got == "" {
			out["error"]++
			continue
		}
		out[got]++
	}
	return out
}

func dialEchoTimeout(nsPath string, addr netip.Addr, port int, d time.Duration) (string, error) {
	var got string
	err := inNS(nsPath, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, uint16(port)).String(), d)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(d))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	return got, err
}

// corednsBinary is $PATRONUS_COREDNS, or the lab's CoreDNS (scripts/lab/build.sh, cached):
// stock CoreDNS, whose kubernetes plugin's multicluster option serves clusterset.local.
func corednsBinary(t *testing.T) string { return testbin.Lab(t, "coredns", "PATRONUS_COREDNS") }

// startNodeCoreDNS runs CoreDNS in network namespace nsName on addr:53 (the node's
// address: pods reach it through their default route), serving cluster.local and
// clusterset.local from the API server of kubeconfig (reachable in the namespace through
// its API forwarder). It returns addr:53.
func startNodeCoreDNS(t *testing.T, nsName, addr, kubeconfig string) string {
	t.Helper()
	dir := t.TempDir()
	conf := fmt.Sprintf(`.:53 {
    bind %s
    errors
    kubernetes cluster.local clusterset.local {
        kubeconfig %s
        multicluster clusterset.local
        ttl 5
    }
}
`, addr, kubeconfig)
	path := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out := &safeBuffer{}
	cmd := exec.Command("ip", "netns", "exec", nsName, corednsBinary(t), "-conf", path)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("--- CoreDNS output ---\n%s", tail(out.String(), 40))
		}
	})
	return net.JoinHostPort(addr, "53")
}

// podResolver resolves through server with sockets made in the pod's namespace (the
// resolver's own goroutines may run on any thread; only the sockets matter).
func podResolver(pod cniPod, server string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var c net.Conn
		err := inNS(pod.netns, func() error {
			var err error
			var d net.Dialer
			c, err = d.DialContext(ctx, "udp", server)
			return err
		})
		return c, err
	}}
}

// mcsService creates Service web (port 80 → 9090, labels) with an EndpointSlice of the
// pod's address (ready as given) in c's default namespace, or updates the slice's readiness.
func mcsService(t *testing.T, c *k8senv.Cluster, pod cniPod, ready bool, labels ...string) {
	t.Helper()
	ctx := context.Background()
	k := c.Client()
	proto, portName, port := corev1.ProtocolTCP, "http", int32(9090)
	if _, err := k.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if _, err := k.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", Labels: pairs(labels)},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
				Ports: []corev1.ServicePort{{Name: portName, Protocol: proto, Port: 80, TargetPort: intstr.FromInt32(port)}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-abcde", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{pod.ip.String()}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &port}},
	}
	api := k.DiscoveryV1().EndpointSlices("default")
	cur, err := api.Get(ctx, sl.Name, metav1.GetOptions{})
	if err == nil {
		sl.ResourceVersion = cur.ResourceVersion
		_, err = api.Update(ctx, sl, metav1.UpdateOptions{})
	} else {
		_, err = api.Create(ctx, sl, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

func pairs(kv []string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func exportWeb(t *testing.T, c *k8senv.Cluster) {
	t.Helper()
	mc, err := mcsclient.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mc.MulticlusterV1beta1().ServiceExports("default").Create(context.Background(), &mcsv1beta1.ServiceExport{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestClusterSetIPAcrossClusters: two clusters (own API servers, one gateway agent binary
// each, pods attached through the real CNI plugin, the WireGuard tunnel the agents bring
// up). Cluster B exports web (labelled latency-sensitive); a pod in A reaches B's pod by
// the ClusterSetIP of A's ServiceImport, through A's nftables translation and the tunnel,
// and by its clusterset.local name through CoreDNS on A's node. A exports web too: its
// ready local endpoint is preferred; while it is not ready, A's clients go to B. Then B's
// agent is killed (no graceful leave) while a client in A keeps connecting: B's
// endpoints leave A's ServiceImport, EndpointSlices and datapath within seconds, and no
// connection of A's client fails.
func TestClusterSetIPAcrossClusters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a, b := newTwoClusters(t, ctx)
	la, ca, lb, cb := a.lab, a.c, b.lab, b.c
	createLabelledNode(t, ca, "gw-1", "10.78.0.1", nil)
	createLabelledNode(t, cb, "gw-2", "10.78.0.2", nil)
	nodeNS := func(n int) string { return fmt.Sprintf("pt-g%s-%d", la.id, n) }
	cnA := newCNINode(t, la.bin, "gw-1", a.cluster, nodeNS(1), filepath.Join(la.dir, "gw-1"), netip.MustParsePrefix("10.244.0.0/24"))
	cnB := newCNINode(t, la.bin, "gw-2", b.cluster, nodeNS(2), filepath.Join(la.dir, "gw-2"), netip.MustParsePrefix("10.248.0.0/24"))
	a.agent = la.addAgent(1, append([]string{"--no-beacons", "--gossip-advertise", "10.78.0.1:7946"}, cnA.agentFlags()...)...)
	b.agent = lb.addAgent(2, append([]string{"--no-beacons", "--gossip-advertise", "10.78.0.2:7946"}, cnB.agentFlags()...)...)
	for _, s := range []*tunnelSide{a, b} {
		if out, err := exec.Command("ip", "netns", "exec", s.agent.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
			t.Fatalf("ip_forward in %s: %v: %s", s.agent.ns, err, out)
		}
		waitFor(t, 60*time.Second, s.cluster+"'s gateway agent ready", func() error {
			if err := s.agent.alive(); err != nil {
				return err
			}
			return localapi.NewClient(s.agent.socket).Ready(context.Background())
		})
	}
	client := cnA.addPod(t, ca, "client-a")
	webA := cnA.addPod(t, ca, "web-a")
	webB := cnB.addPod(t, cb, "web-b")
	serveName(t, webA.netns, webA.ip, 9090, "a")
	serveName(t, webB.netns, webB.ip, 9090, "b")
	waitFor(t, 90*time.Second, "client in A reaches pod B across the tunnel", func() error { return podTCP(client, webB) })

	// B exports web, labelled latency-sensitive: A imports it with a ClusterSetIP, B's
	// endpoint and the class, which A's datapath gives the VIP's traffic.
	mcsService(t, cb, webB, true, "patronus.io/qos-class", "latency-sensitive")
	exportWeb(t, cb)
	mcA, err := mcsclient.NewForConfig(ca.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	var vip netip.Addr
	t0 := time.Now()
	waitFor(t, 60*time.Second, "A's ServiceImport of web with a ClusterSetIP", func() error {
		si, err := mcA.MulticlusterV1beta1().ServiceImports("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(si.Spec.IPs) != 1 || si.Annotations["patronus.io/qos-class"] != "latency-sensitive" {
			return fmt.Errorf("ips %v annotations %v", si.Spec.IPs, si.Annotations)
		}
		vip, err = netip.ParseAddr(si.Spec.IPs[0])
		return err
	})
	waitFor(t, 30*time.Second, "A's datapath sets priority 0:6 (latency-sensitive) on the VIP's connections", func() error {
		out, err := exec.Command("ip", "netns", "exec", a.agent.ns, "nft", "list", "table", "inet", "patronus").CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft: %v: %s", err, out)
		}
		// The VIP's chain records priority 6 in the ct mark; mcs-postrouting applies it.
		if !strings.Contains(string(out), vip.String()) || !strings.Contains(string(out), "| 0x06000000") ||
			!strings.Contains(string(out), "ct mark & 0x07000000 == 0x06000000 meta priority set 0:6") {
			return fmt.Errorf("table inet patronus:\n%s", out)
		}
		return nil
	})
	waitFor(t, 30*time.Second, "client in A reaches B's web by ClusterSetIP", func() error {
		if h := dialVIP(client, vip, 10); h["b"] != 10 {
			return fmt.Errorf("answers %v", h)
		}
		return nil
	})
	t.Logf("B's export reachable from a pod in A by ClusterSetIP %s %v after the ServiceExport", vip, time.Since(t0).Round(time.Millisecond))

	// By name: CoreDNS (kubernetes plugin, multicluster zone) on A's gateway node answers
	// the pod's query for web.default.svc.clusterset.local; the pod connects to the answer.
	dnsAddr := startNodeCoreDNS(t, a.agent.ns, "10.78.0.1", ca.Kubeconfig())
	var byName netip.Addr
	waitFor(t, 30*time.Second, "pod in A resolves web.default.svc.clusterset.local", func() error {
		ips, err := podResolver(client, dnsAddr).LookupNetIP(ctx, "ip4", "web.default.svc.clusterset.local.")
		if err != nil {
			return err
		}
		if len(ips) != 1 || ips[0] != vip {
			return fmt.Errorf("answer %v, want %s", ips, vip)
		}
		byName = ips[0]
		return nil
	})
	if h := dialVIP(client, byName, 10); h["b"] != 10 {
		t.Fatalf("by name: answers %v, want all from B", h)
	}
	t.Logf("pod in A: web.default.svc.clusterset.local -> %s (CoreDNS on its node), answered by B", byName)

	// A exports web too, its endpoint not ready yet: B still serves A's clients.
	mcsService(t, ca, webA, false)
	exportWeb(t, ca)
	waitFor(t, 30*time.Second, "A's ServiceImport lists both clusters", func() error {
		si, err := mcA.MulticlusterV1beta1().ServiceImports("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(si.Status.Clusters) != 2 {
			return fmt.Errorf("clusters %+v", si.Status.Clusters)
		}
		return nil
	})
	if h := dialVIP(client, vip, 10); h["b"] != 10 {
		t.Fatalf("A's endpoint not ready: answers %v, want all from B", h)
	}
	// A's endpoint ready: the local one is preferred.
	mcsService(t, ca, webA, true)
	waitFor(t, 30*time.Second, "A's ready local endpoint preferred", func() error {
		if h := dialVIP(client, vip, 10); h["a"] != 10 {
			return fmt.Errorf("answers %v", h)
		}
		return nil
	})
	// Not ready again: back to B across the tunnel.
	mcsService(t, ca, webA, false)
	waitFor(t, 30*time.Second, "A's clients fall back to B", func() error {
		if h := dialVIP(client, vip, 10); h["b"] != 10 {
			return fmt.Errorf("answers %v", h)
		}
		return nil
	})
	mcsService(t, ca, webA, true)
	waitFor(t, 30*time.Second, "A's ready local endpoint preferred again", func() error {
		if h := dialVIP(client, vip, 10); h["a"] != 10 {
			return fmt.Errorf("answers %v", h)
		}
		return nil
	})

	// B's agent killed while A's client keeps connecting.
	stop := make(chan struct{})
	answers := make(chan map[string]int, 1)
	go func() {
		h := map[string]int{}
		for {
			select {
			case <-stop:
				answers <- h
				return
			default:
			}
			for k, v := range dialVIP(client, vip, 1) {
				h[k] += v
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	lb.kill(b.agent)
	t1 := time.Now()
	waitFor(t, 60*time.Second, "B evicted from A's ServiceImport, EndpointSlices and datapath", func() error {
		si, err := mcA.MulticlusterV1beta1().ServiceImports("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(si.Status.Clusters) != 1 || si.Status.Clusters[0].Cluster != a.cluster {
			return fmt.Errorf("clusters %+v", si.Status.Clusters)
		}
		sls, err := ca.Client().DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{
			LabelSelector: mcsv1beta1.LabelSourceCluster + "=" + b.cluster})
		if err != nil {
			return err
		}
		if len(sls.Items) != 0 {
			return fmt.Errorf("B's EndpointSlices still in A: %d", len(sls.Items))
		}
		out, err := exec.Command("ip", "netns", "exec", a.agent.ns, "nft", "list", "table", "inet", "patronus").CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft: %v: %s", err, out)
		}
		if strings.Contains(string(out), webB.ip.String()) {
			return fmt.Errorf("A's datapath still lists B's endpoint %s", webB.ip)
		}
		return nil
	})
	evicted := time.Since(t1)
	time.Sleep(2 * time.Second) // keep connecting after the eviction
	close(stop)
	h := <-answers
	t.Logf("B's agent killed → B evicted from A (import, slices, nftables) after %v; A's client meanwhile: %v", evicted.Round(time.Millisecond), h)
	if h["error"] != 0 || h["b"] != 0 || h["a"] == 0 {
		t.Errorf("A's client during and after B's eviction: %v, want only answers from A and no failed connection", h)
	}
	if h := dialVIP(client, vip, 10); h["a"] != 10 {
		t.Errorf("after eviction: %v", h)
	}
}

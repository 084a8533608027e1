package agent_test

// Two clusters end to end, as the seed's "Multi-Cluster Setup" describes them: each has
// its own API server and a gateway node (a network namespace on a shared underlay bridge)
// running `patronus agent`, the built binary, with NetworkPolicy enforcement on; pods are
// created through the real CNI plugin (patronus-cni via libcni, as a runtime calls it) and
// bound to their Pod objects. Nothing about tunnels is configured beyond the ConfigMap:
// each agent creates its WireGuard key and device, announces its tunnel signed through
// the mesh, and programs peer and routes from the other cluster's verified announcement.
// A pod in cluster A (10.244/16) reaches a pod in cluster B (10.248/16) and back over
// ICMP and TCP with its own address; a NetworkPolicy in B whose ipBlock excludes A's pod
// CIDR denies A's pod, one that includes it allows it; B's key is rotated under a running
// iperf3 flow; A's agent is restarted under a TCP stream; B's agent is killed and A
// withdraws its peer and routes. A second node of cluster A, not a gateway, routes B's
// pod CIDR to A's gateway and its pod reaches B's.

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh/trust"
)

// tunnelSide is one cluster: its API server, keys, and gateway node.
type tunnelSide struct {
	cluster, cidr string
	n             int // host number of the gateway on the underlay (10.78.0.n)
	key           ed25519.PrivateKey
	lab           *meshLab
	c             *k8senv.Cluster
	agent         *gwAgent
}

// configure writes side s's Secrets (its cluster key, the shared gossip key) and
// ConfigMap (pinning the other side's key, seeding its gossip address) into c.
func (s *tunnelSide) configure(t *testing.T, other *tunnelSide, gossipKey []byte) {
	t.Helper()
	ctx := context.Background()
	secs := s.c.Client().CoreV1().Secrets(k8senv.PatronusNamespace)
	for name, data := range map[string]map[string][]byte{
		trust.ClusterKeySecret: {trust.SecretPrivateKey: s.key.Seed(), trust.SecretPublicKey: []byte(trust.EncodeKey(s.key.Public().(ed25519.PublicKey)))},
		trust.GossipKeySecret:  {trust.SecretGossipKey: gossipKey},
	} {
		if _, err := secs.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cms := s.c.Client().CoreV1().ConfigMaps(k8senv.PatronusNamespace)
	cm, err := cms.Get(ctx, "patronus-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["cluster-id"] = s.cluster
	cm.Data["cluster-cidr"] = s.cidr
	delete(cm.Data, "service-cidr")
	cm.Data["remote-clusters"] = fmt.Sprintf("- {id: %s, endpoint: '10.78.0.%d:51820', cidr: %s, gossip: '10.78.0.%d:7946', publicKey: '%s'}",
		other.cluster, other.n, other.cidr, other.n, trust.EncodeKey(other.key.Public().(ed25519.PublicKey)))
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// cniNode is a node's CNI setup: the plugin binary, its conflist (the node's /24 of the
// cluster CIDR, policy enforcement through the node's agent) and a libcni runtime.
type cniNode struct {
	name, cluster string
	ns            string // netns name
	dir           string
	conflist      string
	list          *libcni.NetworkConfigList
	lc            *libcni.CNIConfig
}

// newCNINode writes the plugin and conflist into dir (the agent's directory: database and
// socket are the ones the agent gets) for a node whose pods take addresses of block, with
// the block's first address on the node's bridge.
func newCNINode(t *testing.T, bin, name, cluster, netnsName, dir string, block netip.Prefix) *cniNode {
	t.Helper()
	cn := &cniNode{name: name, cluster: cluster, ns: netnsName, dir: dir, conflist: filepath.Join(dir, "10-patronus.conflist")}
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "patronus-cni"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := map[string]any{"cniVersion": "1.1.0", "name": "patronus-k8s", "plugins": []any{map[string]any{
		"type": "patronus-cni", "bridge": "cni-bridge0",
		"ipam": map[string]any{"type": "host-local", "subnet": block.String(), "rangeStart": block.Addr().Next().Next().Next().String(),
			"gateway": block.Addr().Next().String(), "dataDir": filepath.Join(dir, "ipam"),
			"routes": []any{map[string]any{"dst": "0.0.0.0/0"}}},
		"sdwan": map[string]any{"database": filepath.Join(dir, "k8s-sdwan.db"), "cluster_id": cluster,
			"enable_policy_enforcement": true, "agent_socket": filepath.Join(dir, "agent.sock")},
	}}}
	raw, _ := json.Marshal(conf)
	if err := os.WriteFile(cn.conflist, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if cn.list, err = libcni.NetworkConfFromBytes(raw); err != nil {
		t.Fatal(err)
	}
	cn.lc = libcni.NewCNIConfigWithCacheDir([]string{filepath.Join(dir, "bin")}, filepath.Join(dir, "cache"), nil)
	return cn
}

// agentFlags are the gateway/node agent flags that make it use this node's conflist and
// enforce NetworkPolicy (eBPF and nftables, the default datapath) with a private bpffs.
func (cn *cniNode) agentFlags() []string {
	return []string{"--cni-conflist", cn.conflist, "--enforce-policy=true", "--bpffs", filepath.Join(cn.dir, "bpf")}
}

// cniPod is a pod made through the plugin.
type cniPod struct {
	name, netns string // netns is a path
	ip          netip.Addr
}

// addPod creates the Pod object (bound to the node) and attaches it through CNI ADD in
// the node's namespace; the pod serves its address-echo on TCP 8080.
func (cn *cniNode) addPod(t *testing.T, c *k8senv.Cluster, name string) cniPod {
	t.Helper()
	ctx := context.Background()
	p, err := c.Client().CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec:       corev1.PodSpec{NodeName: cn.name, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rt := &libcni.RuntimeConf{ContainerID: "ctr-" + name, NetNS: makeNetns(t, "tp"), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", string(p.UID)}}}
	nodePath := "/var/run/netns/" + cn.ns
	var res *current.Result
	if err := inNS(nodePath, func() error {
		r, err := cn.lc.AddNetworkList(ctx, cn.list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	}); err != nil {
		t.Fatalf("CNI ADD of %s on %s: %v", name, cn.name, err)
	}
	t.Cleanup(func() {
		inNS(nodePath, func() error { return cn.lc.DelNetworkList(context.Background(), cn.list, rt) })
	})
	if len(res.IPs) == 0 {
		t.Fatalf("CNI ADD of %s: no IP", name)
	}
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	serveEcho(t, rt.NetNS, ip, 8080)
	return cniPod{name: name, netns: rt.NetNS, ip: ip}
}

func podPing(from cniPod, to netip.Addr) error {
	out, err := exec.Command("ip", "netns", "exec", filepath.Base(from.netns), "ping", "-c", "1", "-W", "1", to.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", to, from.name, err, out)
	}
	return nil
}

// podTCP connects from one pod to the other's echo server and checks the server saw the
// client pod's own address (pod-to-pod across clusters is never masqueraded).
func podTCP(from, to cniPod) error {
	got, err := dialEcho(from.netns, to.ip, 8080)
	if err != nil {
		return fmt.Errorf("TCP %s → %s (%s): %w", from.name, to.name, to.ip, err)
	}
	if got != from.ip.String() {
		return fmt.Errorf("TCP %s → %s: the server saw %q, want the pod's address %s", from.name, to.name, got, from.ip)
	}
	return nil
}

func reachBoth(t *testing.T, what string, x, y cniPod) {
	t.Helper()
	waitFor(t, 30*time.Second, what+": "+x.name+" pings "+y.name, func() error { return podPing(x, y.ip) })
	if err := podPing(y, x.ip); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	for _, p := range [][2]cniPod{{x, y}, {y, x}} {
		if err := podTCP(p[0], p[1]); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

// createLabelledNode makes the Node object name with an InternalIP and labels.
func createLabelledNode(t *testing.T, c *k8senv.Cluster, name, addr string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	n, err := c.Client().CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}
	if _, err := c.Client().CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// newTwoClusters makes clusters A (10.244/16, gateway 10.78.0.1) and B (10.248/16,
// 10.78.0.2): an API server each with Patronus installed, one underlay bridge, a cluster
// key each and a shared gossip key in their Secrets and ConfigMaps. It returns the two
// sides (no agent started yet).
func newTwoClusters(t *testing.T, ctx context.Context) (a, b *tunnelSide) {
	t.Helper()
	la, ca := newMeshLab(t)
	// Cluster B: its own API server, on the same underlay bridge.
	cb := k8senv.Start(t)
	_, kubecfgB, err := cb.InstallPatronus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cb.Host())
	if err != nil {
		t.Fatal(err)
	}
	lb := &meshLab{t: t, id: la.id, bridge: la.bridge, bin: la.bin, dir: la.dir, apiHost: u.Host, kubecfg: kubecfgB}
	gossip, err := trust.GenerateGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	keyA, err := trust.GenerateClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	keyB, err := trust.GenerateClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	a = &tunnelSide{cluster: "cluster-a", cidr: "10.244.0.0/16", n: 1, key: keyA, lab: la, c: ca}
	b = &tunnelSide{cluster: "cluster-b", cidr: "10.248.0.0/16", n: 2, key: keyB, lab: lb, c: cb}
	a.configure(t, b, gossip)
	b.configure(t, a, gossip)
	return a, b
}

func TestTwoClustersEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a, b := newTwoClusters(t, ctx)
	la, ca, lb, cb := a.lab, a.c, b.lab, b.c
	// Cluster A has two nodes: gw-1 is its gateway (marked), gw-3 is not. Cluster B's
	// only node is its gateway (no Node marked: every node is one).
	createLabelledNode(t, ca, "gw-1", "10.78.0.1", map[string]string{"patronus.io/gateway": "true"})
	createLabelledNode(t, ca, "gw-3", "10.78.0.3", nil)
	createLabelledNode(t, cb, "gw-2", "10.78.0.2", nil)

	// Node CNI setups (the agents' directories are la.dir/gw-N, see addAgent).
	nodeNS := func(n int) string { return fmt.Sprintf("pt-g%s-%d", la.id, n) }
	cnA := newCNINode(t, la.bin, "gw-1", a.cluster, nodeNS(1), filepath.Join(la.dir, "gw-1"), netip.MustParsePrefix("10.244.0.0/24"))
	cnB := newCNINode(t, la.bin, "gw-2", b.cluster, nodeNS(2), filepath.Join(la.dir, "gw-2"), netip.MustParsePrefix("10.248.0.0/24"))
	// Peers come from remote-clusters (gossip seeds), not beacons. The WireGuard endpoint
	// announced is the gossip advertise address's host (--wg-endpoint's default).
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
	podA := cnA.addPod(t, ca, "pod-a")
	podB := cnB.addPod(t, cb, "pod-b")

	tunnelsOf := func(s *tunnelSide) (tunnel.Status, error) {
		var st tunnel.Status
		if err := s.agent.alive(); err != nil {
			return st, err
		}
		out, err := la.cliStdout("keys", "show", "--socket", s.agent.socket, "-o", "json")
		if err != nil {
			return st, fmt.Errorf("patronus keys show: %v: %s", err, out)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return st, fmt.Errorf("keys show -o json: %v: %s", err, out)
		}
		return st, nil
	}
	hasTunnel := func(s *tunnelSide, to *tunnelSide) func() error {
		return func() error {
			st, err := tunnelsOf(s)
			if err != nil {
				return err
			}
			for _, tu := range st.Tunnels {
				if tu.Cluster == to.cluster && tu.Endpoint.String() == fmt.Sprintf("10.78.0.%d:51820", to.n) {
					if len(st.Conditions) != 0 {
						return fmt.Errorf("conditions: %+v", st.Conditions)
					}
					return nil
				}
			}
			return fmt.Errorf("%s: no tunnel to %s yet: %+v", s.cluster, to.cluster, st)
		}
	}
	waitFor(t, 90*time.Second, "A's agent has a tunnel to B", hasTunnel(a, b))
	waitFor(t, 30*time.Second, "B's agent has a tunnel to A", hasTunnel(b, a))
	reachBoth(t, "across the tunnel", podA, podB)

	// patronus status on gateway A shows the active tunnel (the seed's line).
	out, _ := la.cliStdout("status", "--socket", a.agent.socket)
	if !strings.Contains(out, "Active tunnels: 1 (cluster-b)") {
		t.Errorf("patronus status on gateway A lacks the tunnel to cluster-b:\n%s", out)
	}
	js, _ := la.cliStdout("status", "--socket", a.agent.socket, "-o", "json")
	var st struct {
		Agent *struct {
			Live *localapi.Status `json:"live"`
		} `json:"agent"`
	}
	if err := json.Unmarshal([]byte(js), &st); err != nil || st.Agent == nil || st.Agent.Live == nil || len(st.Agent.Live.Tunnels) != 1 ||
		st.Agent.Live.Tunnels[0].Cluster != "cluster-b" || !st.Agent.Live.Tunnels[0].Up || st.Agent.Live.Tunnels[0].Interface == "" {
		t.Errorf("patronus status -o json: live tunnels not [cluster-b up]: %v\n%s", err, js)
	}

	// NetworkPolicy in B holds for traffic arriving from cluster A.
	crossClusterPolicy(t, cb, podA, podB)

	// A node of cluster A that is not its gateway routes B's pod CIDR to gw-1.
	nonGatewayNode(t, la, a, podB)

	// `patronus keys rotate` on gateway B under a running iperf3 flow from pod A to pod B:
	// A learns B's new key through the mesh and the flow completes without a reset.
	rotated := make(chan tunnel.RotateResult, 1)
	flow := iperfDuring(t, podA, podB, 6*time.Second, 2*time.Second, func() {
		out, err := la.cliStdout("keys", "rotate", "--socket", b.agent.socket, "-o", "json")
		var rr tunnel.RotateResult
		if err != nil || json.Unmarshal([]byte(out), &rr) != nil || rr.PublicKey == "" || rr.PublicKey == rr.PreviousPublicKey {
			t.Errorf("patronus keys rotate: %v: %s", err, out)
		}
		rotated <- rr
	})
	rr := <-rotated
	if flow.err != "" {
		t.Fatalf("iperf3 flow across B's key rotation: %s", flow.err)
	}
	t.Logf("iperf3 pod A → pod B across B's key rotation: %.0f Mbit/s average, %d retransmits, slowest 0.5 s interval %.1f Mbit/s (median %.1f)",
		flow.avgMbps, flow.retransmits, flow.minMbps, flow.medianMbps)
	waitFor(t, 30*time.Second, "A uses B's rotated key", func() error {
		st, err := tunnelsOf(a)
		if err != nil {
			return err
		}
		if len(st.Tunnels) != 1 || st.Tunnels[0].PublicKey != rr.PublicKey {
			return fmt.Errorf("A's tunnels %+v, want B's key %s", st.Tunnels, rr.PublicKey)
		}
		return nil
	})

	// Gateway A's agent restarts under a TCP stream from pod B to pod A: same key (node
	// database), tunnel back, the stream survives; the gap is measured.
	before, err := tunnelsOf(a)
	if err != nil {
		t.Fatal(err)
	}
	var restartPing time.Duration
	res := streamDuring(t, podB, podA, func() {
		t0 := time.Now()
		la.stop(a.agent)
		la.start(a.agent)
		waitFor(t, 60*time.Second, "restarted A has its tunnel to B", hasTunnel(a, b))
		waitFor(t, 30*time.Second, "pod A pings pod B after A's restart", func() error { return podPing(podA, podB.ip) })
		restartPing = time.Since(t0)
	})
	if res.err != nil {
		t.Fatalf("TCP stream pod B → pod A across A's agent restart: %v (after %d bytes)", res.err, res.bytes)
	}
	if st, _ := tunnelsOf(a); st.PublicKey != before.PublicKey {
		t.Errorf("restarted agent changed its WireGuard key %s → %s", before.PublicKey, st.PublicKey)
	}
	t.Logf("gateway agent A restart: SIGTERM → pod A's ping to B answered %v; TCP stream B → A: longest read gap %v (before the restart %v), %d bytes, no reset",
		restartPing.Round(time.Millisecond), res.maxGap.Round(time.Millisecond), res.baseGap.Round(time.Millisecond), res.bytes)
	reachBoth(t, "after A's restart", podA, podB)

	// Cluster B removed: its gateway agent gone without leaving; its announcements expire
	// and A withdraws peer and routes.
	lb.kill(b.agent)
	t1 := time.Now()
	waitFor(t, 60*time.Second, "A withdraws cluster B", func() error {
		st, err := tunnelsOf(a)
		if err != nil {
			return err
		}
		if len(st.Tunnels) != 0 {
			return fmt.Errorf("tunnels still %+v", st.Tunnels)
		}
		out, err := exec.Command("ip", "-n", a.agent.ns, "route", "show", "proto", "77").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "" {
			return fmt.Errorf("routes proto 77 still: %v %s", err, out)
		}
		return nil
	})
	t.Logf("gateway agent B killed → A withdrew peer and route after %v", time.Since(t1).Round(time.Millisecond))
}

// crossClusterPolicy applies NetworkPolicies in B selecting pod B: an ipBlock that
// excludes A's pod CIDR denies pod A, one that includes it allows pod A.
func crossClusterPolicy(t *testing.T, cb *k8senv.Cluster, podA, podB cniPod) {
	t.Helper()
	nps := cb.Client().NetworkingV1().NetworkPolicies("default")
	port := intstr.FromInt32(8080)
	tcp := corev1.ProtocolTCP
	np := func(peer networkingv1.IPBlock) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "from-remote"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": podB.name}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{IPBlock: &peer}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
				}},
			}}
	}
	ctx := context.Background()
	// Everything but cluster A's pods.
	deny, err := nps.Create(ctx, np(networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{"10.244.0.0/16"}}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "B's policy excluding A's pod CIDR denies pod A", func() error {
		if err := podTCP(podA, podB); err == nil {
			return errors.New("pod A still connects to pod B")
		}
		return nil
	})
	// Stays denied (not a transient failure).
	for range 3 {
		if err := podTCP(podA, podB); err == nil {
			t.Fatal("pod A connected to pod B through a policy whose ipBlock excludes A's pod CIDR")
		}
	}
	// Exactly cluster A's pods.
	allow := np(networkingv1.IPBlock{CIDR: "10.244.0.0/16"})
	allow.ResourceVersion = deny.ResourceVersion
	if _, err := nps.Update(ctx, allow, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "B's policy including A's pod CIDR allows pod A", func() error { return podTCP(podA, podB) })
	t.Logf("NetworkPolicy in cluster B: ipBlock 0.0.0.0/0 except 10.244.0.0/16 denied pod A (%s), ipBlock 10.244.0.0/16 allowed it", podA.ip)
	if err := nps.Delete(ctx, "from-remote", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// nonGatewayNode adds node gw-3 of cluster A (not marked a gateway) with its agent and a
// pod: its agent routes B's pod CIDR via gw-1's node address, gw-1 routes gw-3's block
// back (intra-cluster routing, set here by hand: the nodes do not run nodenet), and the
// pod on gw-3 reaches pod B both ways.
func nonGatewayNode(t *testing.T, la *meshLab, a *tunnelSide, podB cniPod) {
	t.Helper()
	cn := newCNINode(t, la.bin, "gw-3", a.cluster, fmt.Sprintf("pt-g%s-3", la.id), filepath.Join(la.dir, "gw-3"), netip.MustParsePrefix("10.244.1.0/24"))
	ng := la.addAgent(3, append([]string{"--no-beacons"}, cn.agentFlags()...)...)
	if out, err := exec.Command("ip", "netns", "exec", ng.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("ip_forward: %v: %s", err, out)
	}
	la.ip("-n", a.agent.ns, "route", "add", "10.244.1.0/24", "via", "10.78.0.3")
	waitFor(t, 60*time.Second, "gw-3's agent ready", func() error {
		if err := ng.alive(); err != nil {
			return err
		}
		return localapi.NewClient(ng.socket).Ready(context.Background())
	})
	waitFor(t, 30*time.Second, "gw-3 routes cluster B's pod CIDR via gw-1", func() error {
		out, err := exec.Command("ip", "-n", ng.ns, "route", "show", "10.248.0.0/16").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "via 10.78.0.1") {
			return fmt.Errorf("route to 10.248.0.0/16 on gw-3: %v %q", err, out)
		}
		return nil
	})
	podC := cn.addPod(t, a.c, "pod-a2")
	reachBoth(t, "non-gateway node of A ↔ B", podC, podB)
}

type iperfResult struct {
	err                          string
	avgMbps, minMbps, medianMbps float64
	retransmits                  int
}

// iperfDuring runs an iperf3 TCP flow (capped at 200 Mbit/s, so the event has CPU left on
// two shared cores) from pod from to pod to for d, calling event after at.
func iperfDuring(t *testing.T, from, to cniPod, d, at time.Duration, event func()) iperfResult {
	t.Helper()
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatalf("iperf3 not installed (Debian package iperf3, scripts/deps.sh installs it): %v", err)
	}
	srv := exec.Command("ip", "netns", "exec", filepath.Base(to.netns), "iperf3", "-s", "-B", to.ip.String(), "-p", "5201")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	// The client starts once the server listens (a probe connection would count as a test).
	waitFor(t, 30*time.Second, "iperf3 server listening in "+to.name, func() error {
		out, err := exec.Command("ip", "netns", "exec", filepath.Base(to.netns), "ss", "-Hltn", "sport = :5201").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "5201") {
			return fmt.Errorf("not yet: %v %s", err, out)
		}
		return nil
	})
	var out []byte
	var cerr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		out, cerr = exec.Command("ip", "netns", "exec", filepath.Base(from.netns), "iperf3", "-c", to.ip.String(), "-p", "5201",
			"-t", fmt.Sprint(int(d.Seconds())), "-i", "0.5", "-b", "200M", "-J").Output()
	}()
	time.Sleep(at)
	event()
	<-done
	var rep struct {
		Error     string `json:"error"`
		Intervals []struct {
			Sum struct {
				BPS float64 `json:"bits_per_second"`
			} `json:"sum"`
		} `json:"intervals"`
		End struct {
			SumSent struct {
				BPS         float64 `json:"bits_per_second"`
				Retransmits int     `json:"retransmits"`
			} `json:"sum_sent"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return iperfResult{err: fmt.Sprintf("iperf3: %v (%v): %s", cerr, err, out)}
	}
	r := iperfResult{err: rep.Error, avgMbps: rep.End.SumSent.BPS / 1e6, retransmits: rep.End.SumSent.Retransmits}
	if r.err == "" && cerr != nil {
		r.err = cerr.Error()
	}
	var v []float64
	for _, iv := range rep.Intervals {
		v = append(v, iv.Sum.BPS/1e6)
	}
	if len(v) == 0 {
		r.err += " (no intervals)"
		return r
	}
	sorted := slices.Sorted(slices.Values(v))
	r.minMbps, r.medianMbps = sorted[0], sorted[len(sorted)/2]
	return r
}

type streamResult struct {
	err             error
	bytes           int64
	maxGap, baseGap time.Duration
}

// streamDuring streams TCP from a server in pod to to a reader in pod from (about
// 1.6 MB/s: 16 KiB every 10 ms), runs event once a second of stream has gone through,
// keeps reading for two more seconds and reports the longest gap between reads before
// and during/after the event. Any error but the reader's own close (a reset, a timeout
// of 60 s without data) is returned.
func streamDuring(t *testing.T, from, to cniPod, event func()) streamResult {
	t.Helper()
	var ln net.Listener
	if err := inNS(to.netns, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(to.ip, 9000).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 16<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	var c net.Conn
	if err := inNS(from.netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(to.ip, 9000).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		res      streamResult
		inEvent  bool
		stopping bool
	)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 64<<10)
		last := time.Now()
		for {
			c.SetReadDeadline(time.Now().Add(60 * time.Second))
			n, err := c.Read(buf)
			now := time.Now()
			mu.Lock()
			if err != nil {
				if !stopping {
					res.err = err
				}
				mu.Unlock()
				return
			}
			res.bytes += int64(n)
			gap := now.Sub(last)
			if inEvent {
				res.maxGap = max(res.maxGap, gap)
			} else {
				res.baseGap = max(res.baseGap, gap)
			}
			mu.Unlock()
			last = now
		}
	}()
	time.Sleep(time.Second)
	mu.Lock()
	inEvent = true
	mu.Unlock()
	event()
	time.Sleep(2 * time.Second)
	mu.Lock()
	stopping = true
	mu.Unlock()
	c.Close()
	<-readDone
	mu.Lock()
	defer mu.Unlock()
	if res.err != nil && errors.Is(res.err, io.EOF) {
		res.err = fmt.Errorf("server closed the stream: %w", res.err)
	}
	return res
}

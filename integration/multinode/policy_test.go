package multinode

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/patronus/patronus/agent"
	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
)

// NetworkPolicy between pods of different nodes: three node namespaces, each with the
// agent in-process (agent.Run with per-node pod networking and policy enforcement in
// the node's namespace, as the DaemonSet runs `patronus agent --manage-conflist`), one
// pod per node. n1 and n2 share the underlay subnet (direct routes), n3 is on another
// subnet of the same wire (VXLAN). Policies hold for traffic crossing nodes on both
// paths, and the destination sees the real source pod address (no SNAT between pods).
func TestNetworkPolicyAcrossNodes(t *testing.T) { policyAcrossNodes(t, false) }

// TestNetworkPolicyAcrossNodesEncrypted: the same with the ConfigMap's node-encryption
// wireguard, so every cross-node path is the WireGuard device ptw0 (the policies still
// see the real source pods).
func TestNetworkPolicyAcrossNodesEncrypted(t *testing.T) { policyAcrossNodes(t, true) }

func policyAcrossNodes(t *testing.T, encrypted bool) {
	requireRoot(t)
	c := k8senv.Start(t)
	k := c.Client()
	ctx := context.Background()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "patronus-config"},
		Data: map[string]string{"cluster-id": "test-cluster", "cluster-cidr": "10.244.0.0/16", "service-cidr": k8senv.DefaultServiceCIDR}}
	wantB, wantC := "dev eth0", "dev ptx0"
	if encrypted {
		cm.Data["node-encryption"] = "wireguard"
		wantB, wantC = "dev ptw0", "dev ptw0"
	}
	if _, err := k.CoreV1().ConfigMaps("kube-system").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const podNS = "mn-pol"
	if _, err := k.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: podNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	l := newLab(t, c, "kube-system")
	type polNode struct {
		*node
		sock string
	}
	start := func(name string, addr netip.Addr, other netip.Prefix) *polNode {
		n := &polNode{node: l.makeNode(name, addr, other), sock: ""}
		n.sock = filepath.Join(n.dir, "agent.sock")
		// The node's setup for the nftables layer of datapath "both" (bridged traffic
		// through netfilter), as the policy tests do.
		if err := doIn(n.netns, func() error {
			return os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("1"), 0o644)
		}); err != nil {
			t.Fatal(err)
		}
		createNodeObject(t, k, name, addr)
		// What install-cni would have installed, with this node's own state and policy on;
		// the agent renders its block into it.
		var doc map[string]any
		json.Unmarshal(l.baseConfList(n.node), &doc)
		p := doc["plugins"].([]any)[0].(map[string]any)
		p["sdwan"] = map[string]any{"database": n.db.Path(), "cluster_id": "test-cluster", "enable_policy_enforcement": true, "agent_socket": n.sock}
		raw, _ := json.Marshal(doc)
		os.MkdirAll(filepath.Dir(n.confList), 0o755)
		if err := os.WriteFile(n.confList, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		opts := agent.Options{RESTConfig: c.RESTConfig(), NodeName: name, ClusterID: "test-cluster",
			DatabasePath: n.db.Path(), SocketPath: n.sock, ConflistPath: n.confList, MetricsAddr: "off",
			StorePollInterval: 100 * time.Millisecond, MCSRetryInterval: time.Hour, Registry: prometheus.NewRegistry(),
			Logger:  testLogger(t, name),
			NodeNet: &agent.NodeNetOptions{NetNSPath: nsPath(n.netns), Resync: time.Second},
			Policy:  &agent.PolicyOptions{BPFFS: enforcetest.BPFFS(t), NetNS: nsPath(n.netns), AuditOut: io.Discard, CounterInterval: time.Second},
		}
		actx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- agent.Run(actx, opts) }()
		t.Cleanup(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Errorf("%s: agent did not stop", name)
			}
		})
		api := localapi.NewClient(n.sock)
		t.Cleanup(api.Close)
		eventually(t, 60*time.Second, name+" agent ready", func() error {
			select {
			case err := <-done:
				t.Fatalf("%s: agent exited: %v", name, err)
			default:
			}
			return api.Ready(ctx)
		})
		return n
	}
	other := netip.MustParsePrefix("192.168.81.0/24")
	n1 := start("pol-n1", netip.MustParseAddr("192.168.80.11"), other)
	n2 := start("pol-n2", netip.MustParseAddr("192.168.80.12"), other)
	n3 := start("pol-n3", netip.MustParseAddr("192.168.81.13"), netip.MustParsePrefix("192.168.80.0/24"))

	// One pod per node: the API object (bound to the node, labelled app=<name>), CNI ADD
	// with the conflist the agent wrote, then the status kubelet would write (other
	// nodes' agents know a peer pod's address only from it).
	addPod := func(n *polNode, name string) *pod {
		obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: podNS, Name: name, Labels: map[string]string{"app": name}},
			Spec: corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}}}
		created, err := k.CoreV1().Pods(podNS).Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		list, err := libcni.ConfListFromFile(n.confList)
		if err != nil {
			t.Fatal(err)
		}
		p := &pod{name: name, netns: makeNS(t, "p")}
		p.rt = &libcni.RuntimeConf{ContainerID: "ctr-" + name + "-" + randHex(6), NetNS: nsPath(p.netns), IfName: "eth0",
			Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", podNS}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", string(created.UID)}}}
		var res *current.Result
		if err := doIn(n.netns, func() error {
			r, err := n.cni.AddNetworkList(ctx, list, p.rt)
			if err != nil {
				return err
			}
			res, err = current.NewResultFromResult(r)
			return err
		}); err != nil {
			t.Fatalf("ADD %s on %s: %v", name, n.name, err)
		}
		t.Cleanup(func() { doIn(n.netns, func() error { return n.cni.DelNetworkList(context.Background(), list, p.rt) }) })
		p.ip = netip.MustParseAddr(res.IPs[0].Address.IP.String())
		created.Status.Phase, created.Status.PodIP = corev1.PodRunning, p.ip.String()
		created.Status.PodIPs = []corev1.PodIP{{IP: p.ip.String()}}
		if _, err := k.CoreV1().Pods(podNS).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		serveTCP(t, p.netns, p.ip, 8080)
		return p
	}
	a, b, cc := addPod(n1, "a"), addPod(n2, "b"), addPod(n3, "c")
	pods := []*pod{a, b, cc}
	for _, p := range pods {
		t.Logf("pod %s %s", p.name, p.ip)
	}
	// The paths under test: from n1, b's block is routed directly, c's over VXLAN (both
	// over WireGuard when encrypted).
	eventually(t, 30*time.Second, "n1 routes b ("+wantB+") and c ("+wantC+")", func() error {
		rs := ownedRoutes(t, n1.node)
		dev := func(ip netip.Addr) string {
			for dst, r := range rs {
				if netip.MustParsePrefix(dst).Contains(ip) {
					return r
				}
			}
			return "no route"
		}
		if rb, rc := dev(b.ip), dev(cc.ip); !strings.HasSuffix(rb, wantB) || !strings.HasSuffix(rc, wantC) {
			return fmt.Errorf("to b: %s, to c: %s", rb, rc)
		}
		return nil
	})

	// expect probes every ordered pair until the verdicts match want; allowed
	// connections must show the source pod's own address to the server.
	expect := func(stage string, want func(from, to *pod) bool) {
		t.Helper()
		eventually(t, 20*time.Second, stage, func() error {
			var bad []string
			for _, from := range pods {
				for _, to := range pods {
					if from == to {
						continue
					}
					seen, err := dialTCP(from.netns, to.ip, 8080)
					switch w := want(from, to); {
					case w && err != nil:
						bad = append(bad, fmt.Sprintf("%s→%s: want allowed, got %v", from.name, to.name, err))
					case w && seen != from.ip.String():
						bad = append(bad, fmt.Sprintf("%s→%s: server saw %s, want the pod's own %s", from.name, to.name, seen, from.ip))
					case !w && err == nil:
						bad = append(bad, fmt.Sprintf("%s→%s: want denied, got through", from.name, to.name))
					}
				}
			}
			if len(bad) > 0 {
				return fmt.Errorf("%s", strings.Join(bad, "; "))
			}
			return nil
		})
		t.Logf("%s: as expected", stage)
	}
	all := func(_, _ *pod) bool { return true }
	expect("no policy", all)

	allowFrom := func(name, target, from string) {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: podNS, Name: name},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": target}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
					PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": from}}}}}}}}
		if _, err := k.NetworkingV1().NetworkPolicies(podNS).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// a (n1) admits b only: b→a allowed on the direct route, c→a denied over VXLAN.
	allowFrom("a-from-b", "a", "b")
	expect("a admits b only", func(from, to *pod) bool { return to != a || from == b })
	// c (n3, VXLAN) admits a only: a→c allowed and b→c denied, both over VXLAN.
	allowFrom("c-from-a", "c", "a")
	expect("and c admits a only", func(from, to *pod) bool {
		return (to != a || from == b) && (to != cc || from == a)
	})
	if err := k.NetworkingV1().NetworkPolicies(podNS).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("policies deleted", all)
}

// createNodeObject creates the Node with its InternalIP and no podCIDR (blocks come
// from Leases).
func createNodeObject(t *testing.T, k kubernetes.Interface, name string, addr netip.Addr) {
	t.Helper()
	ctx := context.Background()
	n, err := k.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr.String()}}
	if _, err := k.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

package policy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/patronus/patronus/integration/k8senv"
)

func sel(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func np(name string, pod *metav1.LabelSelector, types []networkingv1.PolicyType, in []networkingv1.NetworkPolicyIngressRule, eg []networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *pod, PolicyTypes: types, Ingress: in, Egress: eg}}
}

var (
	ingress = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egress  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
)

func port(p intstr.IntOrString, proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: &p, Protocol: &proto}
}

// TestNetworkPolicyEndToEnd runs the scenarios for each ConfigMap datapath setting
// (ebpf, nftables, both), one API server for all (each has its own node namespace,
// agent, bpffs and namespaces).
func TestNetworkPolicyEndToEnd(t *testing.T) {
	c := k8senv.Start(t)
	// At the same time: each datapath has its own node namespace, agent, bpffs, kube-proxy
	// and namespaces, and most of the time is spent waiting for expected denials to time
	// out. (Concurrent t.Run rather than t.Parallel, which -parallel caps at GOMAXPROCS.)
	var wg sync.WaitGroup
	for _, dp := range []string{"ebpf", "nftables", "both"} {
		wg.Go(func() { t.Run(dp, func(t *testing.T) { runScenarios(t, c, dp) }) })
	}
	wg.Wait()
}

func runScenarios(t *testing.T, c *k8senv.Cluster, datapath string) {
	n := newNode(t, c, datapath)
	for _, lns := range []string{"x", "y", "z"} {
		n.namespace(lns)
	}
	xa, xb := n.addPod("x", "a", false), n.addPod("x", "b", false)
	ya, yb := n.addPod("y", "a", false), n.addPod("y", "b", false)
	za := n.addPod("z", "a", false)
	// The other pods the upstream scenarios list (each scenario probes only its own).
	n.addPod("x", "c", false)
	n.addPod("y", "c", false)
	n.addPod("z", "b", false)
	_ = za
	n.services(t, c)
	is := func(p *pod, lns, name string) bool { return p.lns == lns && p.name == name }

	n.expect("no policy", "tcp", 80, allAllowed)

	// default-deny-ingress
	n.apply("x", np("deny-all", sel(), ingress, nil, nil))
	n.expect("default-deny-ingress", "tcp", 80, func(_, to *pod) bool { return to.lns != "x" })
	n.expect("default-deny-ingress", "udp", 80, func(_, to *pod) bool { return to.lns != "x" })
	n.deletePolicy("x", "deny-all")
	n.expect("policy delete", "tcp", 80, allAllowed)

	// allow from a pod selector, then updated to a namespace selector, then deleted
	n.apply("x", np("allow-b", sel("pod", "a"), nil,
		[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("pod", "b")}}}}, nil))
	n.expect("allow from pod selector", "tcp", 80, func(from, to *pod) bool { return to != xa || from == xb })
	n.apply("x", np("allow-b", sel("pod", "a"), nil,
		[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("ns", "y")}}}}, nil))
	n.expect("policy update: namespace selector", "tcp", 80, func(from, to *pod) bool { return to != xa || from.lns == "y" })
	n.deletePolicy("x", "allow-b")
	n.expect("policy delete", "tcp", 80, allAllowed)

	// named port: only serve-81-tcp to x/a
	n.apply("x", np("named-port", sel("pod", "a"), nil,
		[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromString("serve-81-tcp"), corev1.ProtocolTCP)}}}, nil))
	n.expect("named port (80 closed)", "tcp", 80, func(_, to *pod) bool { return to != xa })
	n.expect("named port (81 open)", "tcp", 81, allAllowed)
	n.deletePolicy("x", "named-port")

	// egress deny from x
	n.apply("x", np("deny-egress", sel(), egress, nil, nil))
	n.expect("egress deny", "tcp", 80, func(from, _ *pod) bool { return from.lns != "x" })
	n.expect("egress deny", "udp", 80, func(from, _ *pod) bool { return from.lns != "x" })
	n.deletePolicy("x", "deny-egress")

	// ipBlock with except
	n.apply("x", np("ipblock", sel("pod", "a"), nil, []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
		IPBlock: &networkingv1.IPBlock{CIDR: "10.244.0.0/16", Except: []string{ya.ip.String() + "/32"}}}}}}, nil))
	n.expect("ipBlock with except", "tcp", 80, func(from, to *pod) bool { return to != xa || from != ya })
	n.deletePolicy("x", "ipblock")

	// pod relabel: x/a admits pods labelled role=client from any namespace
	n.apply("x", np("clients", sel("pod", "a"), nil, []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
		NamespaceSelector: sel(), PodSelector: sel("role", "client")}}}}, nil))
	n.expect("pod relabel (before)", "tcp", 80, func(_, to *pod) bool { return to != xa })
	n.relabelPod(yb, map[string]*string{"role": ptr("client")})
	n.expect("pod relabel (y/b role=client)", "tcp", 80, func(from, to *pod) bool { return to != xa || from == yb })
	n.relabelPod(yb, map[string]*string{"role": nil})
	n.expect("pod relabel (label removed)", "tcp", 80, func(_, to *pod) bool { return to != xa })
	n.deletePolicy("x", "clients")

	// namespace relabel: x/a admits namespaces labelled team=blue
	n.apply("x", np("blue", sel("pod", "a"), nil, []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
		NamespaceSelector: sel("team", "blue")}}}}, nil))
	n.expect("namespace relabel (before)", "tcp", 80, func(_, to *pod) bool { return to != xa })
	n.relabelNamespace("z", map[string]*string{"team": ptr("blue")})
	n.expect("namespace relabel (z team=blue)", "tcp", 80, func(from, to *pod) bool { return to != xa || from.lns == "z" })
	n.relabelNamespace("z", map[string]*string{"team": nil})
	n.deletePolicy("x", "blue")

	// UDP: x admits UDP 80 only
	n.apply("x", np("udp-only", sel(), ingress, []networkingv1.NetworkPolicyIngressRule{{
		Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromInt32(80), corev1.ProtocolUDP)}}}, nil))
	n.expect("UDP allowed", "udp", 80, allAllowed)
	n.expect("UDP policy (TCP closed)", "tcp", 80, func(_, to *pod) bool { return to.lns != "x" })
	n.deletePolicy("x", "udp-only")
	n.expect("all policies deleted", "tcp", 80, allAllowed)

	t.Run("qos class sets the priority", func(t *testing.T) { qosPriority(t, n, xb) })
	t.Run("service", func(t *testing.T) { serviceScenario(t, n, xa, xb, ya) })
	t.Run("add waits for policy", func(t *testing.T) { addWaits(t, n, ya) })
	t.Run("counter and audit", func(t *testing.T) { countersAndAudit(t, n, datapath) })
	t.Run("audit all", func(t *testing.T) { auditAll(t, n, za, ya) })
	t.Run("agent restart", func(t *testing.T) { agentRestart(t, n, ya, xb, is) })
	t.Run("upstream", func(t *testing.T) { upstreamScenarios(t, n) })
}

// serviceScenario probes through the Service ClusterIPs (n.services: kube-proxy in
// nftables mode in the node namespace, or its stand-in). Egress is decided on the
// translated destination: x/b may reach x/a:80 only, so x/b → service(x/a) passes and
// x/b → service(y/a) is denied.
func serviceScenario(t *testing.T, n *node, xa, xb, ya *pod) {
	svcA, svcY := n.svc[xa.String()], n.svc[ya.String()]
	if !xb.probe("tcp", netip.AddrPortFrom(svcY, 80), 2*time.Second) {
		t.Fatal("x/b cannot reach service(y/a) without policy")
	}
	n.apply("x", np("egress-to-a", sel("pod", "b"), egress, nil, []networkingv1.NetworkPolicyEgressRule{{
		To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("pod", "a")}}, Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromInt32(80), corev1.ProtocolTCP)}}}))
	defer n.deletePolicy("x", "egress-to-a")
	deadline := time.Now().Add(20 * time.Second)
	for {
		toY := xb.probe("tcp", netip.AddrPortFrom(svcY, 80), 300*time.Millisecond)
		toA := xb.probe("tcp", netip.AddrPortFrom(svcA, 80), 2*time.Second)
		if !toY && toA {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("through Service IPs: x/b -> svc(x/a) %v (want true), x/b -> svc(y/a) %v (want false)", toA, toY)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// addWaits: in a default-deny namespace, a pod is isolated the moment ADD returns.
func addWaits(t *testing.T, n *node, ya *pod) {
	n.namespace("w")
	n.apply("w", np("deny-all", sel(), ingress, nil, nil))
	// The policy exists before the pod: wait until the agent has it (a pod of w would
	// otherwise race the policy, not the ADD).
	time.Sleep(500 * time.Millisecond)
	var denied, tries int
	for i := 0; i < 3; i++ {
		p := n.addPod("w", fmt.Sprintf("new%d", i), true) // listening before ADD
		delete(n.pods, p.String())
		// First packets right after ADD returned.
		tries++
		if !ya.probe("tcp", netip.AddrPortFrom(p.ip, 80), 300*time.Millisecond) &&
			!ya.probe("udp", netip.AddrPortFrom(p.ip, 80), 300*time.Millisecond) {
			denied++
		}
	}
	if denied != tries {
		t.Fatalf("a pod of a default-deny namespace answered right after ADD returned (%d of %d isolated)", denied, tries)
	}
}

// countersAndAudit: the denials above show in patronus_policy_blocks_total and in the
// audit log as JSON lines (eBPF ring buffer, nftables NFLOG).
func countersAndAudit(t *testing.T, n *node, datapath string) {
	t.Helper()
	var got float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = 0
		mfs, err := n.opts.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var m *dto.MetricFamily
		for _, f := range mfs {
			if f.GetName() == "patronus_policy_blocks_total" {
				m = f
			}
		}
		if m != nil {
			for _, s := range m.GetMetric() {
				lbl := map[string]string{}
				for _, l := range s.GetLabel() {
					lbl[l.GetName()] = l.GetValue()
				}
				if lbl["namespace"] == n.prefix+"-w" && lbl["policy"] == "default-deny" && lbl["direction"] == "ingress" {
					got += s.GetCounter().GetValue()
				}
			}
		}
		if got > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got == 0 {
		t.Errorf("patronus_policy_blocks_total{namespace=%s-w,policy=default-deny,direction=ingress} stayed 0", n.prefix)
	} else {
		t.Logf("patronus_policy_blocks_total{namespace=%s-w,policy=default-deny,direction=ingress} = %v", n.prefix, got)
	}
	// Audit lines come from the eBPF ring buffer and from nftables' NFLOG. In mode both,
	// bridged same-node traffic meets the nftables forward hook before the destination
	// veth's TC egress (to_pod): the ingress denial is nftables' (NFLOG) and the egress
	// denial eBPF's (from_pod runs before the bridge). Both must be audited.
	checkAuditLine(t, n, n.prefix+"-w/deny-all", "ingress")
	if datapath == "both" {
		checkAuditLine(t, n, n.prefix+"-x/deny-egress", "egress")
	}
}

// checkAuditLine waits for a TCP/80 deny line of wantPolicy in direction wantDir.
func checkAuditLine(t *testing.T, n *node, wantPolicy, wantDir string) {
	t.Helper()
	var line map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for line == nil && time.Now().Before(deadline) {
		for _, l := range strings.Split(n.audit.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(l), &rec) == nil && rec["verdict"] == "deny" && rec["protocol"] == "TCP" && rec["port"] == float64(80) &&
				rec["direction"] == wantDir && strings.Contains(fmt.Sprint(rec["policy"]), wantPolicy) {
				line = rec
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if line == nil {
		t.Fatalf("no TCP/80 %s deny audit line for %s; audit log:\n%s", wantDir, wantPolicy, n.audit.String())
	}
	for _, k := range []string{"time", "source", "destination", "port", "protocol", "verdict", "policy"} {
		if _, ok := line[k]; !ok {
			t.Errorf("audit line lacks %q: %v", k, line)
		}
	}
	t.Logf("audit line: %v", line)
}

// agentRestart: the agent is cancelled and started again while a TCP flow between
// allowed pods runs; the flow never breaks and denied traffic stays denied throughout.
func agentRestart(t *testing.T, n *node, ya, xb *pod, _ func(*pod, string, string) bool) {
	n.apply("x", np("from-y", sel("pod", "b"), ingress, []networkingv1.NetworkPolicyIngressRule{{
		From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("ns", "y")}}}}, nil))
	defer n.deletePolicy("x", "from-y")
	za := n.pods["z/a"]
	n.expect("before restart", "tcp", 80, func(from, to *pod) bool { return to != xb || from.lns == "y" })
	conn, err := ya.dial(netip.AddrPortFrom(xb.ip, 80), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	flowErr := make(chan error, 1)
	leaks := make(chan string, 100)
	go func() {
		defer close(flowErr)
		for i := 0; ctx.Err() == nil; i++ {
			if !echo(conn, time.Second) {
				flowErr <- fmt.Errorf("established flow y/a -> x/b broke at exchange %d", i)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	proberDone := make(chan struct{})
	go func() {
		defer close(proberDone)
		for ctx.Err() == nil {
			if za.probe("tcp", netip.AddrPortFrom(xb.ip, 80), 200*time.Millisecond) {
				select {
				case leaks <- time.Now().Format(time.RFC3339Nano):
				default:
				}
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	n.stop()
	time.Sleep(time.Second) // no agent at all
	n.start()
	time.Sleep(time.Second) // the new agent's first syncs
	cancel()
	<-proberDone
	if err := <-flowErr; err != nil {
		t.Error(err)
	}
	close(leaks)
	for l := range leaks {
		t.Errorf("denied z/a -> x/b passed during the restart at %s", l)
	}
	n.expect("after restart", "tcp", 80, func(from, to *pod) bool { return to != xb || from.lns == "y" })
}

// qosPriority: a pod's QoS annotation reaches its endpoint as the skb priority the
// datapath sets (the eBPF program writing it is tested in dataplane/enforce).
func qosPriority(t *testing.T, n *node, p *pod) {
	for _, tc := range []struct {
		class string
		want  uint32
	}{{"latency-sensitive", 6}, {"bulk", 2}, {"best-effort", 0}} {
		b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{"patronus.io/qos-class": tc.class}}})
		if _, err := n.k.CoreV1().Pods(p.ns).Patch(context.Background(), p.name, "application/merge-patch+json", b, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			ep, ok := n.endpoint(p)
			if ok && ep.Priority == tc.want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("class %s: endpoint %s priority %d (found %v), want %d", tc.class, p, ep.Priority, ok, tc.want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// auditAll: allowed flows are audited only for namespaces annotated patronus.io/audit=all.
func auditAll(t *testing.T, n *node, za, ya *pod) {
	hasAllow := func(from *pod) bool {
		for _, l := range strings.Split(n.audit.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(l), &rec) == nil && rec["verdict"] == "allow" && rec["source"] == from.ip.String() &&
				rec["protocol"] == "TCP" && rec["port"] == float64(81) {
				return true
			}
		}
		return false
	}
	if !za.probe("tcp", netip.AddrPortFrom(ya.ip, 81), 2*time.Second) {
		t.Fatal("z/a -> y/a:81 failed")
	}
	time.Sleep(300 * time.Millisecond)
	if hasAllow(za) {
		t.Fatalf("allowed flow audited without the namespace annotation:\n%s", n.audit.String())
	}
	ann := func(v any) {
		b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{"patronus.io/audit": v}}})
		if _, err := n.k.CoreV1().Namespaces().Patch(context.Background(), za.ns, "application/merge-patch+json", b, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ann("all")
	defer ann(nil)
	deadline := time.Now().Add(10 * time.Second)
	for !hasAllow(za) {
		if time.Now().After(deadline) {
			t.Fatalf("no allow audit line for z/a -> y/a:81 with %s annotated patronus.io/audit=all:\n%s", za.ns, n.audit.String())
		}
		// New connections (new source ports): an established flow is not re-reported.
		za.probe("tcp", netip.AddrPortFrom(ya.ip, 81), 2*time.Second)
		time.Sleep(200 * time.Millisecond)
	}
}

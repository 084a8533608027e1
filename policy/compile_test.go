package policy

import (
	. "github.com/patronus/patronus/policy/npbuild"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPeerContains(t *testing.T) {
	p := Peer{
		Prefix: netip.MustParsePrefix("10.0.0.0/8"),
		Except: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.2.3.4/32")},
	}
	v6 := Peer{Prefix: netip.MustParsePrefix("fd00::/64"), Except: []netip.Prefix{netip.MustParsePrefix("fd00::5/128")}}
	cases := []struct {
		peer Peer
		addr string
		want bool
	}{
		{p, "10.0.0.1", true},
		{p, "10.255.255.255", true},
		{p, "10.1.0.0", false},
		{p, "10.1.255.255", false},
		{p, "10.2.3.4", false},
		{p, "10.2.3.5", true},
		{p, "11.0.0.0", false},
		{p, "::ffff:10.0.0.1", true}, // v4-mapped addresses are matched as IPv4
		{v6, "fd00::1", true},
		{v6, "fd00::5", false},
		{v6, "fd00:0:0:1::1", false},
		{v6, "10.0.0.1", false},
	}
	for _, tc := range cases {
		if got := tc.peer.Contains(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("%s contains %s = %v, want %v", tc.peer, tc.addr, got, tc.want)
		}
	}
}

func TestParseIPBlock(t *testing.T) {
	cases := []struct {
		cidr    string
		except  []string
		want    string // Peer.String(), "" for an error
		errPart string
	}{
		{"10.0.0.0/8", nil, "10.0.0.0/8", ""},
		{"10.9.8.7/8", []string{"10.1.2.3/16"}, "10.0.0.0/8 except 10.1.0.0/16", ""},
		{"fd00::/48", []string{"fd00::1/128"}, "fd00::/48 except fd00::1/128", ""},
		{"10.0.0.0/33", nil, "", "cidr"},
		{"10.0.0.0", nil, "", "cidr"},
		{"10.0.0.0/8", []string{"11.0.0.0/16"}, "", "not inside"},
		{"10.0.0.0/16", []string{"10.0.0.0/8"}, "", "not inside"},
		{"10.0.0.0/8", []string{"fd00::/64"}, "", "not inside"},
		{"10.0.0.0/8", []string{"bad"}, "", "except[0]"},
	}
	for _, tc := range cases {
		p, err := parseIPBlock(&networkingv1.IPBlock{CIDR: tc.cidr, Except: tc.except})
		if tc.want == "" {
			if err == nil || !strings.Contains(err.Error(), tc.errPart) {
				t.Errorf("%s except %v: err %v, want one mentioning %q", tc.cidr, tc.except, err, tc.errPart)
			}
			continue
		}
		if err != nil || p.String() != tc.want {
			t.Errorf("%s except %v: got %q, %v; want %q", tc.cidr, tc.except, p, err, tc.want)
		}
	}
}

// decide is a helper for one flow between two pods of w.
func decide(t *testing.T, s *Set, from, to string, proto Protocol, port uint16) Verdict {
	t.Helper()
	v, err := s.Decide(Flow{SrcPod: from, DstPod: to, Protocol: proto, Port: port})
	if err != nil {
		t.Fatalf("Decide(%s→%s): %v", from, to, err)
	}
	return v
}

type flowWant struct {
	from, to string
	proto    Protocol
	port     uint16
	allowed  bool
}

func checkFlows(t *testing.T, s *Set, flows []flowWant) {
	t.Helper()
	for _, f := range flows {
		if v := decide(t, s, f.from, f.to, f.proto, f.port); v.Allowed != f.allowed {
			t.Errorf("%s→%s %s/%d: allowed=%v, want %v (%s)", f.from, f.to, f.proto, f.port, v.Allowed, f.allowed, v)
		}
	}
}

func TestEndPort(t *testing.T) {
	w := newWorld("xa ya")
	w.apply(pol("range", podA, Ingress(From(nil, PortSpan(pTCP, 8000, 8080), Port(pUDP, 53)))))
	checkFlows(t, w.compile(t), []flowWant{
		{"y/a", "x/a", TCP, 7999, false},
		{"y/a", "x/a", TCP, 8000, true},
		{"y/a", "x/a", TCP, 8042, true},
		{"y/a", "x/a", TCP, 8080, true},
		{"y/a", "x/a", TCP, 8081, false},
		{"y/a", "x/a", UDP, 8000, false},
		{"y/a", "x/a", UDP, 53, true},
		{"y/a", "x/a", TCP, 53, false},
	})
}

func TestIPBlockIngressAndEgress(t *testing.T) {
	w := newWorld("xa xb ya yb") // x: 10.0.0.1-2, y: 10.0.1.1-2
	w.apply(
		pol("in", podA, Ingress(From(Peers(IPPeer("10.0.1.0/24", "10.0.1.2/32"))))),
		pol("out", map[string]string{"pod": "b"}, Egress(To(Peers(IPPeer("10.0.0.0/16", "10.0.1.0/24")), Port(pTCP, 80)))),
	)
	s := w.compile(t)
	checkFlows(t, s, []flowWant{
		{"y/a", "x/a", TCP, 80, true},
		{"y/b", "x/a", TCP, 80, false}, // excepted
	})
	// x/b's egress allows 10.0.0.0/16 minus 10.0.1.0/24 on TCP/80.
	checkFlows(t, s, []flowWant{
		{"x/b", "y/a", TCP, 80, false},
		{"x/b", "x/a", TCP, 80, false}, // egress ok, but x/a's ingress only allows y
		{"x/b", "x/a", TCP, 81, false},
	})
	// Addresses outside the cluster: egress of x/b to an external address.
	v, err := s.Decide(Flow{SrcPod: "x/b", DstIP: netip.MustParseAddr("10.0.200.1"), Protocol: TCP, Port: 80})
	if err != nil || !v.Allowed || v.Ingress.Pod != "" {
		t.Errorf("x/b→10.0.200.1: %+v, %v", v, err)
	}
	v, err = s.Decide(Flow{SrcIP: netip.MustParseAddr("10.0.1.77"), DstPod: "x/a", Protocol: TCP, Port: 80})
	if err != nil || !v.Allowed || v.Egress.Pod != "" {
		t.Errorf("10.0.1.77→x/a: %+v, %v", v, err)
	}
}

func TestPolicyTypeDefaults(t *testing.T) {
	w := newWorld("xa ya")
	ingressOnly := pol("ingress-only", podA)
	ingressOnly.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{From(Peers(PodPeer(Labels("pod", "nobody"))))}
	withEgress := pol("with-egress", podA)
	withEgress.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{To(nil, Port(pTCP, 53))}
	egressTypeOnly := pol("egress-type", podA, Egress())
	egressTypeOnly.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{From(nil)} // ignored: type not listed
	cases := []struct {
		pol           networkingv1.NetworkPolicy
		ingIso, egIso bool
	}{
		{ingressOnly, true, false},
		{withEgress, true, true},
		{pol("empty", podA), true, false},
		{egressTypeOnly, false, true},
	}
	for _, tc := range cases {
		w.policies = []networkingv1.NetworkPolicy{tc.pol}
		s := w.compile(t)
		ep, _ := s.Endpoint("x/a")
		if ep.IngressIsolated != tc.ingIso || ep.EgressIsolated != tc.egIso {
			t.Errorf("%s: isolated ingress=%v egress=%v, want %v %v", tc.pol.Name, ep.IngressIsolated, ep.EgressIsolated, tc.ingIso, tc.egIso)
		}
		if tc.pol.Name == "egress-type" && len(ep.Ingress) != 0 {
			t.Errorf("ingress rules of a policy without the Ingress type compiled: %+v", ep.Ingress)
		}
		if other, _ := s.Endpoint("y/a"); other.IngressIsolated || other.EgressIsolated {
			t.Errorf("%s isolates an unselected pod", tc.pol.Name)
		}
	}
}

// A selector matching no pod must allow nothing; it must never become "every address".
func TestPeerMatchingNothingAllowsNothing(t *testing.T) {
	w := newWorld("xa ya")
	w.apply(
		pol("in", podA, Ingress(From(Peers(PodPeer(Labels("pod", "ghost")))))),
		pol("out", podA, Egress(To(Peers(NsPeer(nsName("nonexistent")))))),
	)
	s := w.compile(t)
	ep, _ := s.Endpoint("x/a")
	if len(ep.Ingress) != 0 || len(ep.Egress) != 0 {
		t.Fatalf("rules compiled for empty peers: %+v %+v", ep.Ingress, ep.Egress)
	}
	checkFlows(t, s, []flowWant{{"y/a", "x/a", TCP, 80, false}, {"x/a", "y/a", TCP, 80, false}})
}

// Named ports resolve per destination pod: on the selected pod for ingress, on each peer
// pod for egress. Two pods use the name "http" for different numbers.
func TestNamedPortsPerPod(t *testing.T) {
	w := newWorld("xa xb ya yb")
	w.pod("x/a").Spec.Containers[0].Ports = append(w.pod("x/a").Spec.Containers[0].Ports, corev1.ContainerPort{Name: "http", ContainerPort: 8080})
	w.pod("x/b").Spec.Containers[0].Ports = append(w.pod("x/b").Spec.Containers[0].Ports, corev1.ContainerPort{Name: "http", ContainerPort: 9090, Protocol: pTCP})
	w.pod("y/b").Spec.Containers[0].Ports = append(w.pod("y/b").Spec.Containers[0].Ports, corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: pUDP})
	w.apply(
		pol("ingress-http", anyPod, Ingress(From(nil, Named("http")))),
		pol("egress-http", podA, inNS("y"), Egress(To(nil, Named("http"), Port(pTCP, 7000)))),
		pol("egress-http-udp", map[string]string{"pod": "b"}, inNS("y"), Egress(To(Peers(IPPeer("10.0.0.0/24")), NamedPortProto(pUDP, "http")))),
	)
	s := w.compile(t)
	checkFlows(t, s, []flowWant{
		{"y/a", "x/a", TCP, 8080, true},
		{"y/a", "x/a", TCP, 9090, false},
		{"y/a", "x/b", TCP, 9090, true},
		{"y/a", "x/b", TCP, 8080, false},
		{"y/a", "y/b", TCP, 8080, false}, // y/b's http is UDP
		{"y/a", "y/b", UDP, 8080, false}, // egress named port is TCP
		{"y/a", "y/b", TCP, 7000, true},  // numeric port applies to every destination
		{"y/b", "x/a", UDP, 8080, false}, // nobody in 10.0.0.0/24 has a UDP port named http...
		{"x/a", "y/b", TCP, 81, true},
	})
	// ...(y/b has one, but is outside the block): the UDP rule compiles to nothing.
	ep, _ := s.Endpoint("y/b")
	if !ep.EgressIsolated || len(ep.Egress) != 0 {
		t.Errorf("y/b egress: isolated=%v rules=%+v", ep.EgressIsolated, ep.Egress)
	}
	// One API rule became several Rules (one per resolved port set) with the same Index.
	ya, _ := s.Endpoint("y/a")
	if len(ya.Egress) < 3 || slices.ContainsFunc(ya.Egress, func(r Rule) bool { return r.Index != 0 || r.Policy != "y/egress-http" }) {
		t.Errorf("y/a egress rules: %+v", ya.Egress)
	}
}

func TestEndpointsAndPeers(t *testing.T) {
	w := newWorld("xa xb ya")
	w.pods = append(w.pods,
		corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "host", Labels: map[string]string{"pod": "host"}},
			Spec:   corev1.PodSpec{HostNetwork: true},
			Status: corev1.PodStatus{PodIP: "192.168.1.10"}},
		corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "pending", Labels: map[string]string{"pod": "pending"}}},
		corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "done", Labels: map[string]string{"pod": "done"}},
			Status: corev1.PodStatus{Phase: corev1.PodSucceeded, PodIP: "10.0.0.99"}},
		corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "q", Name: "dual", Labels: map[string]string{"pod": "dual"}},
			Status: corev1.PodStatus{PodIP: "10.0.9.1", PodIPs: []corev1.PodIP{{IP: "10.0.9.1"}, {IP: "fd00::9:1"}}}},
	)
	w.apply(polSel("from-all-pods", metav1.LabelSelector{}, Ingress(From(Peers(NsPeer(all))))))
	s := w.compile(t)

	var names []string
	for _, ep := range s.Endpoints {
		names = append(names, ep.Name())
	}
	if want := []string{"q/dual", "x/a", "x/b", "x/pending", "y/a"}; !reflect.DeepEqual(names, want) {
		t.Errorf("endpoints %v, want %v", names, want)
	}
	// The pending pod is isolated before it has an address.
	if ep, _ := s.Endpoint("x/pending"); !ep.IngressIsolated || len(ep.IPs) != 0 {
		t.Errorf("pending pod: %+v", ep)
	}
	// Peers: every pod with an IP except hostNetwork and finished ones; both IPs of dual.
	ep, _ := s.Endpoint("x/a")
	var got []string
	for _, p := range ep.Ingress[0].Peers {
		got = append(got, p.String())
	}
	if want := []string{"10.0.9.1/32", "fd00::9:1/128", "10.0.0.1/32", "10.0.0.2/32", "10.0.1.1/32"}; !reflect.DeepEqual(got, want) {
		t.Errorf("peers %v, want %v", got, want)
	}
	v, err := s.Decide(Flow{SrcPod: "q/dual", SrcIP: netip.MustParseAddr("fd00::9:1"), DstPod: "x/a", DstIP: netip.MustParseAddr("10.0.0.1"), Protocol: TCP, Port: 80})
	if err != nil || !v.Allowed {
		t.Errorf("dual v6 → x/a: %v %v", v, err)
	}
	// The host-network pod's address is not a pod address: denied.
	v, err = s.Decide(Flow{SrcIP: netip.MustParseAddr("192.168.1.10"), DstPod: "x/a", Protocol: TCP, Port: 80})
	if err != nil || v.Allowed {
		t.Errorf("hostNetwork → x/a: %v %v", v, err)
	}
	if _, err := s.Decide(Flow{SrcPod: "x/host", DstPod: "x/a", Protocol: TCP, Port: 80}); err == nil {
		t.Error("Decide accepted a hostNetwork pod as an endpoint")
	}
	if _, err := s.Decide(Flow{SrcPod: "x/pending", DstPod: "x/a", Protocol: TCP, Port: 80}); err == nil {
		t.Error("Decide accepted a pod without an IP and no IP given")
	}
}

func TestNodeFilter(t *testing.T) {
	w := newWorld("xa xb ya")
	w.pod("x/a").Spec.NodeName = "n1"
	w.pod("x/b").Spec.NodeName = "n2"
	w.pod("y/a").Spec.NodeName = "n1"
	w.apply(polSel("from-b", metav1.LabelSelector{}, Ingress(From(Peers(PodPeer(Labels("pod", "b")))))))
	s, err := Compile(Input{Policies: w.policies, Pods: w.pods, Namespaces: w.namespaces}, Options{Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Endpoints) != 2 || s.Endpoints[0].Name() != "x/a" || s.Endpoints[1].Name() != "y/a" {
		t.Fatalf("endpoints on n1: %+v", s.Endpoints)
	}
	// Peers still come from the whole cluster.
	if r := s.Endpoints[0].Ingress; len(r) != 1 || len(r[0].Peers) != 1 || r[0].Peers[0].Prefix.String() != "10.0.0.2/32" {
		t.Errorf("x/a ingress: %+v", r)
	}
}

func TestDeterministic(t *testing.T) {
	w := newWorld("xa xb xc ya yb za")
	w.apply(
		pol("p1", podA, Ingress(From(Peers(NsPeer(all)), Named("serve-80-tcp"))), Egress(To(nil, Named("serve-81-udp")))),
		polSel("p2", metav1.LabelSelector{}, Ingress(From(Peers(PodPeer(all), IPPeer("10.0.0.0/8", "10.0.1.0/24"))))),
		pol("p3", podA, inNS("y"), Egress(To(Peers(NsPodPeer(nsName("x"), all))))),
	)
	a := w.compile(t)
	slices.Reverse(w.pods)
	slices.Reverse(w.policies)
	slices.Reverse(w.namespaces)
	b := w.compile(t)
	if !reflect.DeepEqual(a.Endpoints, b.Endpoints) {
		t.Error("compiling the same state in another order gives another result")
	}
}

// Invalid policies fail closed: the pods stay isolated, the bad part allows nothing, and
// the error names the policy and field.
func TestInvalidPolicyFailsClosed(t *testing.T) {
	w := newWorld("xa ya")
	bad := Port(pTCP, 80)
	bad.EndPort = ptr(int32(70))
	badProto := Port("ICMP", 80)
	w.apply(
		pol("bad-port", podA, Ingress(From(nil, bad))),
		pol("bad-proto", podA, Ingress(From(nil, badProto))),
		pol("bad-cidr", podA, Egress(To(Peers(IPPeer("10.0.0.0/40"))))),
		pol("bad-sel", podA, Ingress(From(Peers(PodPeer(Expr("pod", "Like", "a")))))),
	)
	s, err := Compile(Input{Policies: w.policies, Pods: w.pods, Namespaces: w.namespaces}, Options{})
	if err == nil {
		t.Fatal("no error for invalid policies")
	}
	for _, part := range []string{
		"networkpolicy x/bad-port: spec.ingress[0].ports[0]: endPort",
		"networkpolicy x/bad-proto: spec.ingress[0].ports[0]: protocol",
		"networkpolicy x/bad-cidr: spec.egress[0].to[0]: ipBlock: cidr",
		"networkpolicy x/bad-sel: spec.ingress[0].from[0]: podSelector",
	} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q does not mention %q", err, part)
		}
	}
	checkFlows(t, s, []flowWant{{"y/a", "x/a", TCP, 80, false}, {"x/a", "y/a", TCP, 80, false}})
}

func ptr[T any](v T) *T { return &v }

func TestVerdictExplanation(t *testing.T) {
	w := newWorld("xa xb")
	w.apply(
		polSel("deny-all", metav1.LabelSelector{}, Ingress()),
		pol("allow-b", map[string]string{"pod": "b"}, Ingress(From(Peers(PodPeer(Labels("pod", "a"))), Port(pTCP, 80)))),
	)
	s := w.compile(t)
	v := decide(t, s, "x/a", "x/b", TCP, 80)
	want := "egress: x/a not isolated; ingress: x/b isolated by x/allow-b, x/deny-all; rule x/allow-b ingress[0] allows from pod x/a (10.0.0.1) on TCP/80 → ALLOWED"
	if v.String() != want {
		t.Errorf("got  %s\nwant %s", v, want)
	}
	v = decide(t, s, "x/a", "x/b", TCP, 81)
	want = "egress: x/a not isolated; ingress: x/b isolated by x/allow-b, x/deny-all; no rule allows from pod x/a (10.0.0.1) on TCP/81 → DENIED"
	if v.String() != want {
		t.Errorf("got  %s\nwant %s", v, want)
	}
}

func TestEndpointPolicyEqual(t *testing.T) {
	w := newWorld("xa xb ya")
	w.apply(pol("p", podA, Ingress(From(Peers(IPPeer("10.0.0.0/8", "10.0.1.0/24")), Port(pTCP, 80)))))
	a, b := w.compile(t), w.compile(t)
	for i := range a.Endpoints {
		if !a.Endpoints[i].Equal(&b.Endpoints[i]) {
			t.Errorf("%s: two compilations of one state differ", a.Endpoints[i].Name())
		}
	}
	w.apply(pol("p", podA, Ingress(From(Peers(IPPeer("10.0.0.0/8", "10.0.2.0/24")), Port(pTCP, 80)))))
	c := w.compile(t)
	xa, _ := a.Endpoint("x/a")
	xa2, _ := c.Endpoint("x/a")
	if xa.Equal(xa2) {
		t.Error("a changed except is not seen")
	}
	xb, _ := a.Endpoint("x/b")
	xb2, _ := c.Endpoint("x/b")
	if !xb.Equal(xb2) {
		t.Error("an endpoint the change does not touch differs")
	}
}

// A new pod's address known to the agent before its status shows it: the pod is an
// endpoint with that address, and other pods' rules match it.
func TestKnownIPs(t *testing.T) {
	w := newWorld("xa ya")
	w.pods = append(w.pods, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "new", Labels: map[string]string{"pod": "new"}}})
	w.apply(
		pol("to-new", podA, Egress(To(Peers(PodPeer(Labels("pod", "new")))))),
		pol("new-from-a", map[string]string{"pod": "new"}, Ingress(From(Peers(PodPeer(Labels("pod", "a")))))),
	)
	known := map[string][]netip.Addr{"x/new": {netip.MustParseAddr("10.0.0.50")}, "x/a": {netip.MustParseAddr("10.9.9.9")}}
	s, err := Compile(Input{Policies: w.policies, Pods: w.pods, Namespaces: w.namespaces}, Options{KnownIPs: known})
	if err != nil {
		t.Fatal(err)
	}
	checkFlows(t, s, []flowWant{
		{"x/a", "x/new", TCP, 80, true},
		{"y/a", "x/new", TCP, 80, false},
		{"x/a", "y/a", TCP, 80, false},
	})
	if ep, _ := s.Endpoint("x/a"); !slices.Equal(ep.IPs, []netip.Addr{netip.MustParseAddr("10.0.0.1")}) {
		t.Errorf("x/a IPs %v: status wins over KnownIPs", ep.IPs)
	}
}

package policy

import (
	"fmt"
	"net/netip"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The 49 data-plane scenarios of the upstream NetworkPolicy e2e suite
// (test/e2e/network/netpol/network_policy.go, k8s v1.37.2; catalogue in
// shared/NETPOL_E2E_CATALOGUE.md), replayed on the compiler and Decide with pod IPs.

type probe struct {
	proto Protocol
	port  uint16
	exp   expectation
}

type step struct {
	do     func(w *world)
	probes []probe
}

type scenario struct {
	num   int
	name  string
	pods  string
	steps []step
}

func tcp(port uint16, exp ...string) probe  { return probe{TCP, port, exp} }
func udp(port uint16, exp ...string) probe  { return probe{UDP, port, exp} }
func sctp(port uint16, exp ...string) probe { return probe{SCTP, port, exp} }

func applying(pols ...networkingv1.NetworkPolicy) func(*world) {
	return func(w *world) { w.apply(pols...) }
}

func one(do func(*world), probes ...probe) []step { return []step{{do, probes}} }

var (
	all    = &metav1.LabelSelector{}
	podA   = map[string]string{"pod": "a"}
	anyPod = map[string]string{}
)

// largeCIDR is the /4 holding ip, as upstream's makeLargeCIDRForIP.
func largeCIDR(ip string) string {
	return netip.PrefixFrom(netip.MustParseAddr(ip), 4).Masked().String()
}

func scenarios() []scenario {
	nsY := nsName("y")
	// Policies that several scenarios share.
	denyIngress := polSel("deny-ingress", metav1.LabelSelector{}, ingress())
	fromNSY := func(ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicy {
		return pol("allow-client-a-via-ns-selector", podA, ingress(from(peers(nsPeer(nsY)), ports...)))
	}
	fromYA := pol("allow-ns-y-pod-a", podA, ingress(from(peers(nsPodPeer(nsY, labels("pod", "a"))))))
	stacked80 := pol("allow-client-a-via-ns-selector-80", podA, ingress(from(peers(nsPeer(nsY)), port(pTCP, 80))))

	return []scenario{
		{1, "default-deny-ingress", "xa xb ya yb", one(applying(denyIngress), tcp(80, "*>x"))},
		{2, "default-deny-all", "xa xb ya", one(applying(polSel("deny-all", metav1.LabelSelector{}, ingress(), egress())),
			tcp(80, "*>x", "x>*"))},
		{3, "podSelector in server namespace", "xa xb xc ya", one(applying(
			pol("x-a-allows-x-b", podA, ingress(from(peers(podPeer(labels("pod", "b"))))))),
			tcp(80, "*>x/a", "+x/b>x/a"))},
		{4, "ingress for a target", "xa xb ya", one(applying(
			polSel("deny-all", metav1.LabelSelector{}, ingress()),
			pol("allow-all-to-a", podA, ingress(from(peers(nsPodPeer(all, all)))))),
			tcp(80, "*>x/b"))},
		{5, "from all namespaces", "xa xb ya za", one(applying(
			pol("allow-from-all-ns", podA, ingress(from(peers(nsPeer(all)))))),
			tcp(80))},
		{6, "namespaceSelector matchLabels", "xa xb ya za", one(applying(fromNSY()),
			tcp(80, "x>x/a", "z>x/a"))},
		{7, "podSelector matchExpressions", "xa xb ya", one(applying(
			pol("allow-b-expr", podA, ingress(from(peers(podPeer(expr("pod", metav1.LabelSelectorOpIn, "b"))))))),
			tcp(80, "*>x/a", "+x/b>x/a"))},
		{8, "namespaceSelector matchExpressions", "xa xb ya za", one(applying(
			pol("allow-y-expr", podA, ingress(from(peers(nsPeer(expr(NamespaceNameLabel, metav1.LabelSelectorOpIn, "y"))))))),
			tcp(80, "x>x/a", "z>x/a"))},
		{9, "podSelector OR namespaceSelector", "xa xb xc ya", one(applying(
			pol("or", podA, ingress(from(peers(
				nsPeer(expr(NamespaceNameLabel, metav1.LabelSelectorOpNotIn, "x")),
				podPeer(labels("pod", "b"))))))),
			tcp(80, "x/c>x/a"))},
		{10, "podSelector AND namespaceSelector", "xa xb ya yb zb", one(applying(
			pol("and", podA, ingress(from(peers(
				nsPodPeer(expr(NamespaceNameLabel, metav1.LabelSelectorOpNotIn, "x"), labels("pod", "b"))))))),
			tcp(80, "*>x/a", "+y/b>x/a", "+z/b>x/a"))},
		{11, "multiple podSelectors and namespaceSelectors", "xa xb ya yb yc", one(applying(
			pol("multi", podA, ingress(from(peers(nsPodPeer(
				expr(NamespaceNameLabel, metav1.LabelSelectorOpNotIn, "x"),
				expr("pod", metav1.LabelSelectorOpIn, "b", "c"))))))),
			tcp(80, "x>x/a", "y/a>x/a"))},
		{12, "any podSelectors", "xa xb xc", one(applying(
			pol("b-or-c", podA, ingress(from(peers(podPeer(labels("pod", "b")), podPeer(labels("pod", "c"))))))),
			tcp(80, "*>x/a", "+x/b>x/a", "+x/c>x/a"))},
		{13, "only from a pod in another namespace", "xa xb ya yb za", one(applying(fromYA),
			tcp(80, "*>x/a", "+y/a>x/a"))},
		{14, "ports", "xa xb ya yb za", one(applying(fromNSY(port(pTCP, 81))),
			tcp(81, "x>x/a", "z>x/a"))},
		{15, "stacked policies", "xa xb ya yb za", []step{
			{applying(fromNSY(port(pTCP, 81))), []probe{tcp(81, "x>x/a", "z>x/a"), tcp(80, "*>x/a")}},
			{applying(stacked80), []probe{tcp(80, "x>x/a", "z>x/a"), tcp(81, "x>x/a", "z>x/a")}},
		}},
		{16, "allow-all", "xa xb ya", one(applying(polSel("allow-all", metav1.LabelSelector{}, ingress(from(nil)))),
			tcp(80), tcp(81))},
		{17, "ingress on one named port", "xa xb ya", one(applying(
			pol("allow-all", anyPod, ingress(from(nil, named("serve-81-tcp"))))),
			tcp(81), tcp(80, "*>x"))},
		{18, "ingress from namespace on one named port", "xa xb ya za", one(applying(
			pol("allow-client-a-via-ns-selector-80", podA, ingress(from(peers(nsPeer(nsY)), namedPortProto(pTCP, "serve-80-tcp"))))),
			tcp(80, "x>x/a", "z>x/a"), tcp(81, "*>x/a"))},
		{19, "egress on one named port", "xa ya", one(applying(
			pol("allow-egress", anyPod, egress(to(nil, named("serve-80-tcp"))))),
			tcp(80), tcp(81, "x>*"))},
		{20, "named port nobody has", "xa ya", one(applying(
			pol("allow-ingress-on-nonexistent-port", podA, ingress(from(nil, namedPortProto(pTCP, "no-such-port"))))),
			tcp(80, "*>x/a"))},
		{21, "updated policy", "xa ya", []step{
			{applying(pol("allow-all-mutate-to-deny-all", anyPod, ingress(from(nil)))), []probe{tcp(81)}},
			{applying(pol("allow-all-mutate-to-deny-all", anyPod, ingress())), []probe{tcp(81, "*>x")}},
		}},
		{22, "updated namespace", "xa ya", []step{
			{applying(pol("allow-client-a-via-ns-selector", podA, ingress(from(peers(nsPeer(labels("ns2", "updated"))))))),
				[]probe{tcp(80, "*>x/a")}},
			{func(w *world) { w.labelNamespace("y", map[string]string{"ns2": "updated"}) },
				[]probe{tcp(80, "*>x/a", "+y>x/a")}},
		}},
		{23, "updated pod", "xa xb", []step{
			{applying(pol("allow-client-a-via-pod-selector", podA, ingress(from(peers(podPeer(labels("pod", "b", "pod2", "updated"))))))),
				[]probe{tcp(80, "*>x/a")}},
			{func(w *world) { w.labelPod("x/b", map[string]string{"pod2": "updated"}) },
				[]probe{tcp(80, "*>x/a", "+x/b>x/a")}},
		}},
		{24, "deny ingress from other namespaces", "xa xb ya za", one(applying(
			polSel("deny-empty-policy", metav1.LabelSelector{}, ingress(from(peers(podPeer(all)))))),
			tcp(80, "y>x", "z>x"))},
		{25, "deny ingress to updated pod", "xa ya", []step{
			{applying(pol("deny-ingress-via-label-selector", map[string]string{"target": "isolated"}, ingress())), []probe{tcp(80)}},
			{func(w *world) { w.labelPod("x/a", map[string]string{"target": "isolated"}) }, []probe{tcp(80, "*>x/a")}},
		}},
		{26, "deny egress by podSelector", "xa xb ya", one(applying(pol("deny-egress-pod-a", podA, egress())),
			tcp(80, "x/a>*"))},
		{27, "deny egress from a namespace", "xa xb ya", one(applying(polSel("deny-egress-ns-x", metav1.LabelSelector{}, egress())),
			tcp(80, "x>*"))},
		{28, "ingress and egress together", "xa xb xc ya", one(applying(
			pol("allow-client-a-via-pod-selector", podA,
				egress(to(nil, portNoProto(80))), ingress(from(peers(podPeer(labels("pod", "b"))))))),
			tcp(80, "*>x/a", "+x/b>x/a"), tcp(81, "*>x/a", "x/a>*", "+x/b>x/a"))},
		{29, "egress denied on client although server allows", "xa ya yb", one(applying(
			pol("allow-to-ns-y-pod-a", podA, egress(to(peers(nsPodPeer(nsY, labels("pod", "a")))))),
			pol("allow-from-xa-on-ya-match-selector", podA, inNS("y"),
				ingress(from(peers(nsPodPeer(nsName("x"), labels("pod", "a")))))),
			pol("allow-from-xa-on-yb-match-selector", map[string]string{"pod": "b"}, inNS("y"),
				ingress(from(peers(nsPodPeer(nsName("x"), labels("pod", "a"))))))),
			tcp(80, "x/a>*", "+x/a>y/a", "*>y/a", "+x/a>y/a", "*>y/b"))},
		{30, "egress to a server in another namespace", "xa ya yb", one(applying(
			pol("allow-to-ns-y-pod-a", podA, egress(to(peers(nsPodPeer(nsY, labels("pod", "a"))))))),
			tcp(80, "x/a>*", "+x/a>y/a"))},
		{31, "any port on one protocol", "xa ya", one(applying(
			pol("allow-ingress-by-proto", podA, ingress(from(nil, protoOnly(pTCP))))),
			tcp(80), udp(80, "*>x/a"))},
		{32, "ingress allow-all takes precedence", "xa ya", []step{
			{applying(pol("allow-ingress-port-80", anyPod, ingress(from(nil, portNoProto(80))))), []probe{tcp(81, "*>x")}},
			{applying(pol("allow-ingress", anyPod, ingress(from(nil)))), []probe{tcp(81)}},
		}},
		{33, "egress allow-all takes precedence", "xa ya", []step{
			{applying(pol("allow-egress-port-80", anyPod, egress(to(nil, portNoProto(80))))), []probe{tcp(81, "x>*")}},
			{applying(pol("allow-egress", anyPod, egress(to(nil)))), []probe{tcp(81)}},
		}},
		{34, "stop enforcing after delete", "xa ya", []step{
			{applying(polSel("deny-all", metav1.LabelSelector{}, ingress(), egress())), []probe{tcp(80, "x>*", "*>x")}},
			{func(w *world) { w.policies = nil }, []probe{tcp(80)}},
		}},
		{35, "egress to a CIDR", "xa ya yb", one(func(w *world) {
			w.apply(pol("allow-client-a-via-cidr-egress-rule", podA, egress(to(peers(ipPeer(w.podIP("y/b")+"/32"))))))
		}, tcp(80, "x/a>*", "+x/a>y/b"))},
		{36, "egress CIDR with except", "xa xb xc", one(func(w *world) {
			w.apply(pol("allow-client-a-via-cidr-egress-rule", podA,
				egress(to(peers(ipPeer(largeCIDR(w.podIP("x/b")), w.podIP("x/b")+"/32"))))))
		}, tcp(80, "x/a>x/b"))},
		{37, "IP in both CIDR and except allowed by another", "xa xb xc", []step{
			{func(w *world) {
				w.apply(pol("allow-client-a-via-cidr-egress-rule", podA,
					egress(to(peers(ipPeer(largeCIDR(w.podIP("x/b")), w.podIP("x/b")+"/32"))))))
			}, []probe{tcp(80, "x/a>x/b")}},
			{func(w *world) {
				w.apply(pol("allow-client-a-via-cidr-egress-rule", podA, egress(to(peers(ipPeer(w.podIP("x/b")+"/32"))))))
			}, []probe{tcp(80, "x/a>*", "+x/a>x/b")}},
		}},
		{38, "ingress and egress controlled independently", "xa xb ya", []step{
			{applying(pol("allow-egress-for-target", podA, egress(to(nil)))), []probe{tcp(80)}},
			{applying(pol("deny-ingress-via-label-selector", podA, ingress())), []probe{tcp(80, "*>x/a")}},
		}},
		{39, "SCTP is not TCP", "xa ya", one(applying(
			polSel("deny-all", metav1.LabelSelector{}, ingress()),
			pol("allow-only-sctp-ingress", podA, ingress(from(nil, port(pSCTP, 81))))),
			tcp(81, "*>x"))},
		{40, "SCTP policy still isolates", "xa ya", one(applying(
			pol("allow-only-sctp-ingress-on-port-80", podA, ingress(from(nil, port(pSCTP, 80))))),
			tcp(81, "*>x/a"))},
		{41, "UDP-only policy denies TCP", "xa ya", one(applying(
			pol("allow-only-udp-ingress-on-port-81", podA, ingress(from(nil, port(pUDP, 81))))),
			tcp(81, "*>x/a"))},
		{42, "namespaceSelector on the default namespace label", "xa xb ya za", one(applying(
			pol("allow-client-a-via-ns-selector-for-immutable-ns-label", podA,
				ingress(from(peers(nsPeer(labels(NamespaceNameLabel, "y"))))))),
			tcp(80, "x>x/a", "z>x/a"))},
		{43, "egress matchExpressions on the default namespace label", "xa xb ya za", one(applying(
			pol("allow-ns-y-match-selector-for-immutable-ns-label", podA,
				egress(to(peers(nsPeer(expr(NamespaceNameLabel, metav1.LabelSelectorOpNotIn, "y"))))))),
			tcp(80, "x/a>y"))},
		{44, "UDP default-deny-ingress", "xa xb ya yb", one(applying(denyIngress), udp(80, "*>x"))},
		{45, "UDP ports", "xa xb ya za", one(applying(fromNSY(port(pUDP, 81))), udp(81, "x>x/a", "z>x/a"))},
		{46, "UDP only from a pod in another namespace", "xa xb ya", one(applying(fromYA), udp(80, "*>x/a", "+y/a>x/a"))},
		{47, "SCTP default-deny-ingress", "xa xb ya yb", one(applying(denyIngress), sctp(80, "*>x"))},
		{48, "SCTP ports", "xa xb ya za", one(applying(fromNSY(port(pSCTP, 81))), sctp(81, "x>x/a", "z>x/a"))},
		{49, "SCTP only from a pod in another namespace", "xa xb ya", one(applying(fromYA), sctp(80, "*>x/a", "+y/a>x/a"))},
	}
}

func TestUpstreamScenarios(t *testing.T) {
	list := scenarios()
	if len(list) != 49 {
		t.Fatalf("%d scenarios, want 49", len(list))
	}
	for i, sc := range list {
		if sc.num != i+1 {
			t.Fatalf("scenario %d numbered %d", i+1, sc.num)
		}
		t.Run(fmt.Sprintf("%02d-%s", sc.num, sc.name), func(t *testing.T) {
			w := newWorld(sc.pods)
			// Before any policy, everything is allowed (the harness checks this first too).
			w.check(t, w.compile(t), TCP, 80, nil)
			for si, st := range sc.steps {
				st.do(w)
				s := w.compile(t)
				for _, p := range st.probes {
					t.Run(fmt.Sprintf("step%d-%s-%d", si+1, p.proto, p.port), func(t *testing.T) {
						w.check(t, s, p.proto, p.port, p.exp)
					})
				}
			}
		})
	}
}

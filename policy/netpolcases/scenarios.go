package netpolcases

import (
	. "github.com/patronus/patronus/policy/npbuild"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func tcp(port int32, exp ...string) Probe  { return Probe{pTCP, port, exp} }
func udp(port int32, exp ...string) Probe  { return Probe{pUDP, port, exp} }
func sctp(port int32, exp ...string) Probe { return Probe{pSCTP, port, exp} }

func applying(pols ...networkingv1.NetworkPolicy) func(Cluster) {
	return func(c Cluster) { c.Apply(pols...) }
}

func one(do func(Cluster), probes ...Probe) []Step { return []Step{{do, probes}} }

var (
	podA   = map[string]string{"pod": "a"}
	anyPod = map[string]string{}
	all    = &metav1.LabelSelector{}
)

// Scenarios returns the 49 scenarios, numbered as in the catalogue. ns maps a logical
// namespace ("x") to the real one the policies must name (nil: the same).
func Scenarios(ns func(string) string) []Scenario {
	if ns == nil {
		ns = func(s string) string { return s }
	}
	b := builder{ns: ns}
	pol, polAll := b.pol, b.polAll
	const in, notIn = metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn
	// Policies that several scenarios share.
	denyIngress := polAll("deny-ingress", Ingress())
	fromNSY := func(ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicy {
		return pol("allow-client-a-via-ns-selector", podA, Ingress(From(Peers(NsPeer(b.nsName("y"))), ports...)))
	}
	fromYA := pol("allow-ns-y-pod-a", podA, Ingress(From(Peers(NsPodPeer(b.nsName("y"), Labels("pod", "a"))))))
	stacked80 := pol("allow-client-a-via-ns-selector-80", podA, Ingress(From(Peers(NsPeer(b.nsName("y"))), Port(pTCP, 80))))
	cidrExcept := func(c Cluster) {
		xb := c.PodIP("x/b")
		c.Apply(pol("allow-client-a-via-cidr-egress-rule", podA, Egress(To(Peers(IPPeer(largeCIDR(xb), xb+"/32"))))))
	}

	list := []Scenario{
		{1, "default-deny-ingress", nil, one(applying(denyIngress), tcp(80, "*>x"))},
		{2, "default-deny-all", nil, one(applying(polAll("deny-all", Ingress(), Egress())),
			tcp(80, "*>x", "x>*"))},
		{3, "podSelector in server namespace", nil, one(applying(
			pol("x-a-allows-x-b", podA, Ingress(From(Peers(PodPeer(Labels("pod", "b"))))))),
			tcp(80, "*>x/a", "+x/b>x/a"))},
		{4, "ingress for a target", nil, one(applying(
			polAll("deny-all", Ingress()),
			pol("allow-all-to-a", podA, Ingress(From(Peers(NsPodPeer(all, all)))))),
			tcp(80, "*>x/b"))},
		{5, "from all namespaces", nil, one(applying(
			pol("allow-from-all-ns", podA, Ingress(From(Peers(NsPeer(all)))))),
			tcp(80))},
		{6, "namespaceSelector matchLabels", nil, one(applying(fromNSY()),
			tcp(80, "x>x/a", "z>x/a"))},
		{7, "podSelector matchExpressions", nil, one(applying(
			pol("allow-b-expr", podA, Ingress(From(Peers(PodPeer(Expr("pod", in, "b"))))))),
			tcp(80, "*>x/a", "+x/b>x/a"))},
		{8, "namespaceSelector matchExpressions", nil, one(applying(
			pol("allow-y-expr", podA, Ingress(From(Peers(NsPeer(b.nsExpr(in, "y"))))))),
			tcp(80, "x>x/a", "z>x/a"))},
		{9, "podSelector OR namespaceSelector", nil, one(applying(
			pol("or", podA, Ingress(From(Peers(NsPeer(b.nsExpr(notIn, "x")), PodPeer(Labels("pod", "b"))))))),
			tcp(80, "x/c>x/a"))},
		{10, "podSelector AND namespaceSelector", nil, one(applying(
			pol("and", podA, Ingress(From(Peers(NsPodPeer(b.nsExpr(notIn, "x"), Labels("pod", "b"))))))),
			tcp(80, "*>x/a", "+y/b>x/a", "+z/b>x/a"))},
		{11, "multiple podSelectors and namespaceSelectors", nil, one(applying(
			pol("multi", podA, Ingress(From(Peers(NsPodPeer(b.nsExpr(notIn, "x"), Expr("pod", in, "b", "c"))))))),
			tcp(80, "x>x/a", "y/a>x/a"))},
		{12, "any podSelectors", nil, one(applying(
			pol("b-or-c", podA, Ingress(From(Peers(PodPeer(Labels("pod", "b")), PodPeer(Labels("pod", "c"))))))),
			tcp(80, "*>x/a", "+x/b>x/a", "+x/c>x/a"))},
		{13, "only from a pod in another namespace", nil, one(applying(fromYA),
			tcp(80, "*>x/a", "+y/a>x/a"))},
		{14, "ports", nil, one(applying(fromNSY(Port(pTCP, 81))),
			tcp(81, "x>x/a", "z>x/a"))},
		{15, "stacked policies", nil, []Step{
			{applying(fromNSY(Port(pTCP, 81))), []Probe{tcp(81, "x>x/a", "z>x/a"), tcp(80, "*>x/a")}},
			{applying(stacked80), []Probe{tcp(80, "x>x/a", "z>x/a"), tcp(81, "x>x/a", "z>x/a")}},
		}},
		{16, "allow-all", nil, one(applying(polAll("allow-all", Ingress(From(nil)))),
			tcp(80), tcp(81))},
		{17, "ingress on one named port", nil, one(applying(
			pol("allow-all", anyPod, Ingress(From(nil, Named("serve-81-tcp"))))),
			tcp(81), tcp(80, "*>x"))},
		{18, "ingress from namespace on one named port", nil, one(applying(
			pol("allow-client-a-via-ns-selector-80", podA, Ingress(From(Peers(NsPeer(b.nsName("y"))), NamedPortProto(pTCP, "serve-80-tcp"))))),
			tcp(80, "x>x/a", "z>x/a"), tcp(81, "*>x/a"))},
		{19, "egress on one named port", nil, one(applying(
			pol("allow-egress", anyPod, Egress(To(nil, Named("serve-80-tcp"))))),
			tcp(80), tcp(81, "x>*"))},
		{20, "named port nobody has", nil, one(applying(
			pol("allow-ingress-on-nonexistent-port", podA, Ingress(From(nil, NamedPortProto(pTCP, "no-such-port"))))),
			tcp(80, "*>x/a"))},
		{21, "updated policy", nil, []Step{
			{applying(pol("allow-all-mutate-to-deny-all", anyPod, Ingress(From(nil)))), []Probe{tcp(81)}},
			{applying(pol("allow-all-mutate-to-deny-all", anyPod, Ingress())), []Probe{tcp(81, "*>x")}},
		}},
		{22, "updated namespace", nil, []Step{
			{applying(pol("allow-client-a-via-ns-selector", podA, Ingress(From(Peers(NsPeer(Labels("ns2", "updated"))))))),
				[]Probe{tcp(80, "*>x/a")}},
			{func(c Cluster) { c.LabelNamespace("y", map[string]string{"ns2": "updated"}) },
				[]Probe{tcp(80, "*>x/a", "+y>x/a")}},
		}},
		{23, "updated pod", nil, []Step{
			{applying(pol("allow-client-a-via-pod-selector", podA, Ingress(From(Peers(PodPeer(Labels("pod", "b", "pod2", "updated"))))))),
				[]Probe{tcp(80, "*>x/a")}},
			{func(c Cluster) { c.LabelPod("x/b", map[string]string{"pod2": "updated"}) },
				[]Probe{tcp(80, "*>x/a", "+x/b>x/a")}},
		}},
		{24, "deny ingress from other namespaces", nil, one(applying(
			polAll("deny-empty-policy", Ingress(From(Peers(PodPeer(all)))))),
			tcp(80, "y>x", "z>x"))},
		{25, "deny ingress to updated pod", nil, []Step{
			{applying(pol("deny-ingress-via-label-selector", map[string]string{"target": "isolated"}, Ingress())), []Probe{tcp(80)}},
			{func(c Cluster) { c.LabelPod("x/a", map[string]string{"target": "isolated"}) }, []Probe{tcp(80, "*>x/a")}},
		}},
		{26, "deny egress by podSelector", nil, one(applying(pol("deny-egress-pod-a", podA, Egress())),
			tcp(80, "x/a>*"))},
		{27, "deny egress from a namespace", nil, one(applying(polAll("deny-egress-ns-x", Egress())),
			tcp(80, "x>*"))},
		{28, "ingress and egress together", nil, one(applying(
			pol("allow-client-a-via-pod-selector", podA,
				Egress(To(nil, PortNoProto(80))), Ingress(From(Peers(PodPeer(Labels("pod", "b"))))))),
			tcp(80, "*>x/a", "+x/b>x/a"), tcp(81, "*>x/a", "x/a>*", "+x/b>x/a"))},
		{29, "egress denied on client although server allows", nil, one(applying(
			pol("allow-to-ns-y-pod-a", podA, Egress(To(Peers(NsPodPeer(b.nsName("y"), Labels("pod", "a")))))),
			pol("allow-from-xa-on-ya-match-selector", podA, b.inNS("y"),
				Ingress(From(Peers(NsPodPeer(b.nsName("x"), Labels("pod", "a")))))),
			pol("allow-from-xa-on-yb-match-selector", map[string]string{"pod": "b"}, b.inNS("y"),
				Ingress(From(Peers(NsPodPeer(b.nsName("x"), Labels("pod", "a"))))))),
			tcp(80, "x/a>*", "+x/a>y/a", "*>y/a", "+x/a>y/a", "*>y/b"))},
		{30, "egress to a server in another namespace", nil, one(applying(
			pol("allow-to-ns-y-pod-a", podA, Egress(To(Peers(NsPodPeer(b.nsName("y"), Labels("pod", "a"))))))),
			tcp(80, "x/a>*", "+x/a>y/a"))},
		{31, "any port on one protocol", nil, one(applying(
			pol("allow-ingress-by-proto", podA, Ingress(From(nil, ProtoOnly(pTCP))))),
			tcp(80), udp(80, "*>x/a"))},
		{32, "ingress allow-all takes precedence", nil, []Step{
			{applying(pol("allow-ingress-port-80", anyPod, Ingress(From(nil, PortNoProto(80))))), []Probe{tcp(81, "*>x")}},
			{applying(pol("allow-ingress", anyPod, Ingress(From(nil)))), []Probe{tcp(81)}},
		}},
		{33, "egress allow-all takes precedence", nil, []Step{
			{applying(pol("allow-egress-port-80", anyPod, Egress(To(nil, PortNoProto(80))))), []Probe{tcp(81, "x>*")}},
			{applying(pol("allow-egress", anyPod, Egress(To(nil)))), []Probe{tcp(81)}},
		}},
		{34, "stop enforcing after delete", nil, []Step{
			{applying(polAll("deny-all", Ingress(), Egress())), []Probe{tcp(80, "x>*", "*>x")}},
			{func(c Cluster) { c.DeleteAllPolicies() }, []Probe{tcp(80)}},
		}},
		{35, "egress to a CIDR", nil, one(func(c Cluster) {
			c.Apply(pol("allow-client-a-via-cidr-egress-rule", podA, Egress(To(Peers(IPPeer(c.PodIP("y/b")+"/32"))))))
		}, tcp(80, "x/a>*", "+x/a>y/b"))},
		{36, "egress CIDR with except", nil, one(cidrExcept, tcp(80, "x/a>x/b"))},
		{37, "IP in both CIDR and except allowed by another", nil, []Step{
			{cidrExcept, []Probe{tcp(80, "x/a>x/b")}},
			{func(c Cluster) {
				c.Apply(pol("allow-client-a-via-cidr-egress-rule", podA, Egress(To(Peers(IPPeer(c.PodIP("x/b")+"/32"))))))
			}, []Probe{tcp(80, "x/a>*", "+x/a>x/b")}},
		}},
		{38, "ingress and egress controlled independently", nil, []Step{
			{applying(pol("allow-egress-for-target", podA, Egress(To(nil)))), []Probe{tcp(80)}},
			{applying(pol("deny-ingress-via-label-selector", podA, Ingress())), []Probe{tcp(80, "*>x/a")}},
		}},
		{39, "SCTP is not TCP", nil, one(applying(
			polAll("deny-all", Ingress()),
			pol("allow-only-sctp-ingress", podA, Ingress(From(nil, Port(pSCTP, 81))))),
			tcp(81, "*>x"))},
		{40, "SCTP policy still isolates", nil, one(applying(
			pol("allow-only-sctp-ingress-on-port-80", podA, Ingress(From(nil, Port(pSCTP, 80))))),
			tcp(81, "*>x/a"))},
		{41, "UDP-only policy denies TCP", nil, one(applying(
			pol("allow-only-udp-ingress-on-port-81", podA, Ingress(From(nil, Port(pUDP, 81))))),
			tcp(81, "*>x/a"))},
		{42, "namespaceSelector on the default namespace label", nil, one(applying(
			pol("allow-client-a-via-ns-selector-for-immutable-ns-label", podA, Ingress(From(Peers(NsPeer(b.nsName("y"))))))),
			tcp(80, "x>x/a", "z>x/a"))},
		{43, "egress matchExpressions on the default namespace label", nil, one(applying(
			pol("allow-ns-y-match-selector-for-immutable-ns-label", podA, Egress(To(Peers(NsPeer(b.nsExpr(notIn, "y"))))))),
			tcp(80, "x/a>y"))},
		{44, "UDP default-deny-ingress", nil, one(applying(denyIngress), udp(80, "*>x"))},
		{45, "UDP ports", nil, one(applying(fromNSY(Port(pUDP, 81))), udp(81, "x>x/a", "z>x/a"))},
		{46, "UDP only from a pod in another namespace", nil, one(applying(fromYA), udp(80, "*>x/a", "+y/a>x/a"))},
		{47, "SCTP default-deny-ingress", nil, one(applying(denyIngress), sctp(80, "*>x"))},
		{48, "SCTP ports", nil, one(applying(fromNSY(Port(pSCTP, 81))), sctp(81, "x>x/a", "z>x/a"))},
		{49, "SCTP only from a pod in another namespace", nil, one(applying(fromYA), sctp(80, "*>x/a", "+y/a>x/a"))},
	}
	// The pods each scenario lists (catalogue column "pods").
	pods := []string{
		"xa xb ya yb", "xa xb ya", "xa xb xc ya", "xa xb ya", "xa xb ya za", "xa xb ya za", "xa xb ya", "xa xb ya za",
		"xa xb xc ya", "xa xb ya yb zb", "xa xb ya yb yc", "xa xb xc", "xa xb ya yb za", "xa xb ya yb za", "xa xb ya yb za",
		"xa xb ya", "xa xb ya", "xa xb ya za", "xa ya", "xa ya", "xa ya", "xa ya", "xa xb", "xa xb ya za", "xa ya",
		"xa xb ya", "xa xb ya", "xa xb xc ya", "xa ya yb", "xa ya yb", "xa ya", "xa ya", "xa ya", "xa ya", "xa ya yb",
		"xa xb xc", "xa xb xc", "xa xb ya", "xa ya", "xa ya", "xa ya", "xa xb ya za", "xa xb ya za",
		"xa xb ya yb", "xa xb ya za", "xa xb ya", "xa xb ya yb", "xa xb ya za", "xa xb ya",
	}
	for i := range list {
		for _, f := range strings.Fields(pods[i]) {
			list[i].Pods = append(list[i].Pods, f[:1]+"/"+f[1:])
		}
	}
	return list
}

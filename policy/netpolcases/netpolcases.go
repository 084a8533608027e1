// Package netpolcases holds the 49 data-plane scenarios of the upstream Kubernetes
// NetworkPolicy e2e suite (test/e2e/network/netpol/network_policy.go, k8s v1.37.2;
// catalogue in shared/NETPOL_E2E_CATALOGUE.md) as data: the pods each lists, the steps
// (policies applied, labels changed, policies deleted) and after each step the expected
// reachability matrix per protocol and port. The pure compiler's table test and the
// end-to-end test through the agent replay the same list, so they cannot drift apart.
//
// The harness it describes: namespaces x, y and z labelled only with
// kubernetes.io/metadata.name; pods labelled pod=<name>, each serving TCP, UDP and SCTP on
// 80 and 81 with container ports named serve-<port>-<tcp|udp|sctp>; probes for every
// ordered pair of distinct listed pods (loopback is ignored, as upstream does).
package netpolcases

import (
	. "github.com/patronus/patronus/policy/npbuild"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Cluster is what a scenario step acts on. Pods are named "x/a" and namespaces "x"
// (logical names); the policies passed to Apply carry the real namespace names (the
// mapping given to Scenarios).
type Cluster interface {
	// Apply creates each policy or replaces the one of the same namespace and name.
	Apply(pols ...networkingv1.NetworkPolicy)
	// DeleteAllPolicies deletes every policy the scenario created.
	DeleteAllPolicies()
	// LabelNamespace and LabelPod add (or overwrite) labels.
	LabelNamespace(ns string, labels map[string]string)
	LabelPod(pod string, labels map[string]string)
	// PodIP is the pod's IPv4 address.
	PodIP(pod string) string
}

// Probe is one reachability matrix to check after a step.
type Probe struct {
	Protocol corev1.Protocol
	Port     int32
	Expect   Expectation
}

// Step changes the cluster, then its probes must hold.
type Step struct {
	Do     func(Cluster)
	Probes []Probe
}

// Scenario is one upstream It(...).
type Scenario struct {
	Num  int
	Name string
	// Pods the scenario creates and probes, as "x/a".
	Pods  []string
	Steps []Step
}

// Namespaces and ports every scenario's pods live in and serve.
var (
	Namespaces = []string{"x", "y", "z"}
	Ports      = []int32{80, 81}
	Protocols  = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
)

// PortName is the container port name upstream gives port/proto ("serve-80-tcp").
func PortName(port int32, proto corev1.Protocol) string {
	return "serve-" + itoa(port) + "-" + strings.ToLower(string(proto))
}

// ContainerPorts are the named ports of every scenario pod.
func ContainerPorts() []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, port := range Ports {
		for _, proto := range Protocols {
			out = append(out, corev1.ContainerPort{Name: PortName(port, proto), ContainerPort: port, Protocol: proto})
		}
	}
	return out
}

// AllPods is the union of the pods of all scenarios, sorted.
func AllPods(list []Scenario) []string {
	seen := map[string]bool{}
	var out []string
	for _, ns := range Namespaces {
		for _, sc := range list {
			for _, p := range sc.Pods {
				if strings.HasPrefix(p, ns+"/") && !seen[p] {
					seen[p] = true
					out = append(out, p)
				}
			}
		}
	}
	// Stable order inside a namespace: pod letters.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// Expectation lists changes to an all-allowed matrix, applied in order, as "FROM>TO"
// (deny) or "+FROM>TO" (allow again). FROM and TO are "*" (every pod), a namespace "x",
// or a pod "x/a".
type Expectation []string

// Allowed says whether traffic from pod to pod ("x/a") is expected to pass.
func (e Expectation) Allowed(from, to string) bool {
	allowed := true
	for _, s := range e {
		allow := strings.HasPrefix(s, "+")
		f, t, ok := strings.Cut(strings.TrimPrefix(s, "+"), ">")
		if !ok {
			panic("netpolcases: bad expectation " + s)
		}
		if match(f, from) && match(t, to) {
			allowed = allow
		}
	}
	return allowed
}

func match(pattern, pod string) bool {
	if pattern == "*" {
		return true
	}
	if strings.Contains(pattern, "/") {
		return pattern == pod
	}
	return strings.HasPrefix(pod, pattern+"/")
}

func itoa(v int32) string {
	if v == 0 {
		return "0"
	}
	var b []byte
	for ; v > 0; v /= 10 {
		b = append([]byte{byte('0' + v%10)}, b...)
	}
	return string(b)
}

// --- policy builders, mirroring how the upstream suite writes its policies ---

type builder struct{ ns func(string) string }

// pol is a policy in namespace x selecting pods with the given labels ({} for all).
func (b builder) pol(name string, sel map[string]string, opts ...Opt) networkingv1.NetworkPolicy {
	p := networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: b.ns("x"), Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}},
	}
	for _, o := range opts {
		o(&p)
	}
	return p
}

func (b builder) polAll(name string, opts ...Opt) networkingv1.NetworkPolicy {
	p := b.pol(name, nil, opts...)
	p.Spec.PodSelector = metav1.LabelSelector{}
	return p
}

func (b builder) inNS(ns string) Opt {
	return func(p *networkingv1.NetworkPolicy) { p.Namespace = b.ns(ns) }
}

// nsName selects the namespace by its immutable name label.
func (b builder) nsName(ns string) *metav1.LabelSelector {
	return Labels(corev1.LabelMetadataName, b.ns(ns))
}

// nsExpr is a matchExpressions selector on the namespace name label.
func (b builder) nsExpr(op metav1.LabelSelectorOperator, nss ...string) *metav1.LabelSelector {
	var vals []string
	for _, n := range nss {
		vals = append(vals, b.ns(n))
	}
	return Expr(corev1.LabelMetadataName, op, vals...)
}

const (
	pTCP  = corev1.ProtocolTCP
	pUDP  = corev1.ProtocolUDP
	pSCTP = corev1.ProtocolSCTP
)

// largeCIDR is the /4 holding ip, as upstream's makeLargeCIDRForIP.
func largeCIDR(ip string) string {
	return netip.PrefixFrom(netip.MustParseAddr(ip), 4).Masked().String()
}

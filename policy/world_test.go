package policy

import (
	"fmt"
	. "github.com/patronus/patronus/policy/npbuild"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// world is the cluster the upstream e2e harness builds: namespaces x, y, z labelled only
// with kubernetes.io/metadata.name, and the pods a scenario lists, labelled pod=<name>,
// each serving 80 and 81 over TCP, UDP and SCTP on ports named serve-<port>-<proto>.
type world struct {
	namespaces []corev1.Namespace
	pods       []corev1.Pod
	policies   []networkingv1.NetworkPolicy
}

// newWorld builds the world for pods given as "xa xb ya" (namespace letter, pod name).
// Pod IPs are 10.0.<namespace index>.<pod letter index + 1>.
func newWorld(pods string) *world {
	w := &world{}
	for _, ns := range []string{"x", "y", "z"} {
		w.namespaces = append(w.namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{NamespaceNameLabel: ns}}})
	}
	for _, f := range strings.Fields(pods) {
		ns, name := f[:1], f[1:]
		ip := fmt.Sprintf("10.0.%d.%d", strings.Index("xyz", ns), name[0]-'a'+1)
		var ports []corev1.ContainerPort
		for _, port := range []int32{80, 81} {
			for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
				ports = append(ports, corev1.ContainerPort{
					Name:          fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))),
					ContainerPort: port, Protocol: proto})
			}
		}
		w.pods = append(w.pods, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		})
	}
	return w
}

func (w *world) pod(nsName string) *corev1.Pod {
	for i := range w.pods {
		if w.pods[i].Namespace+"/"+w.pods[i].Name == nsName {
			return &w.pods[i]
		}
	}
	panic("no pod " + nsName)
}

func (w *world) podIP(nsName string) string { return w.pod(nsName).Status.PodIP }

func (w *world) labelPod(nsName string, labels map[string]string) {
	p := w.pod(nsName)
	for k, v := range labels {
		p.Labels[k] = v
	}
}

func (w *world) labelNamespace(ns string, labels map[string]string) {
	for i := range w.namespaces {
		if w.namespaces[i].Name == ns {
			for k, v := range labels {
				w.namespaces[i].Labels[k] = v
			}
			return
		}
	}
	panic("no namespace " + ns)
}

// apply creates or replaces (same namespace and name) each policy.
func (w *world) apply(pols ...networkingv1.NetworkPolicy) {
	for _, p := range pols {
		i := slices.IndexFunc(w.policies, func(q networkingv1.NetworkPolicy) bool {
			return q.Namespace == p.Namespace && q.Name == p.Name
		})
		if i >= 0 {
			w.policies[i] = p
		} else {
			w.policies = append(w.policies, p)
		}
	}
}

func (w *world) compile(t *testing.T) *Set {
	t.Helper()
	s, err := Compile(Input{Policies: w.policies, Pods: w.pods, Namespaces: w.namespaces}, Options{})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return s
}

// --- policy builders, mirroring how the upstream suite writes its policies ---

var (
	all    = &metav1.LabelSelector{}
	podA   = map[string]string{"pod": "a"}
	anyPod = map[string]string{}
)

// pol is a policy in namespace x selecting pods with the given labels ({} for all).
func pol(name string, sel map[string]string, opts ...Opt) networkingv1.NetworkPolicy {
	p := networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}},
	}
	for _, o := range opts {
		o(&p)
	}
	return p
}

func polSel(name string, sel metav1.LabelSelector, opts ...Opt) networkingv1.NetworkPolicy {
	p := pol(name, nil, opts...)
	p.Spec.PodSelector = sel
	return p
}

func inNS(ns string) Opt { return func(p *networkingv1.NetworkPolicy) { p.Namespace = ns } }

func nsName(ns string) *metav1.LabelSelector { return Labels(NamespaceNameLabel, ns) }

const (
	pTCP  = corev1.ProtocolTCP
	pUDP  = corev1.ProtocolUDP
	pSCTP = corev1.ProtocolSCTP
)

// --- reachability expectations ---

// check compares the verdict for every ordered pair of distinct pods with allowed (pods
// named "ns/pod") and reports every difference, with the verdict's explanation.
func (w *world) check(t *testing.T, s *Set, proto Protocol, port uint16, allowed func(from, to string) bool) {
	t.Helper()
	names := make([]string, len(w.pods))
	for i, p := range w.pods {
		names[i] = p.Namespace + "/" + p.Name
	}
	for _, a := range names {
		for _, b := range names {
			if a == b {
				continue
			}
			v, err := s.Decide(Flow{SrcPod: a, DstPod: b, Protocol: proto, Port: port})
			if err != nil {
				t.Fatalf("Decide %s→%s: %v", a, b, err)
			}
			if w := allowed(a, b); v.Allowed != w {
				t.Errorf("%s/%d %s→%s: allowed=%v, want %v (%s)", proto, port, a, b, v.Allowed, w, v)
			}
		}
	}
}

// ipOf parses a pod IP for tests that build CIDRs from it.
func ipOf(s string) netip.Addr { return netip.MustParseAddr(s) }

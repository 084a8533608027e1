// Package npbuild builds NetworkPolicy objects tersely for tests and test data: the
// compiler's tests (package policy) and the upstream scenarios (package netpolcases) write
// policies with the same small vocabulary, kept here once. Callers usually dot-import it.
package npbuild

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Opt changes a policy under construction.
type Opt func(*networkingv1.NetworkPolicy)

// Ingress sets the ingress rules and lists Ingress in policyTypes (even with no rules).
func Ingress(rules ...networkingv1.NetworkPolicyIngressRule) Opt {
	return func(p *networkingv1.NetworkPolicy) {
		p.Spec.Ingress = append([]networkingv1.NetworkPolicyIngressRule{}, rules...)
		p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
	}
}

// Egress sets the egress rules and lists Egress in policyTypes (even with no rules).
func Egress(rules ...networkingv1.NetworkPolicyEgressRule) Opt {
	return func(p *networkingv1.NetworkPolicy) {
		p.Spec.Egress = append([]networkingv1.NetworkPolicyEgressRule{}, rules...)
		p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
	}
}

func From(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports}
}

func To(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports}
}

func Peers(p ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return p }

// Labels is a matchLabels selector from key, value pairs.
func Labels(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

// Expr is a selector of one matchExpressions requirement.
func Expr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

func PodPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func NsPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func NsPodPeer(ns, pod *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: ns, PodSelector: pod}
}

func IPPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func Port(proto corev1.Protocol, p int32) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(p)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

// PortNoProto is a numeric port with the protocol left to its default (TCP).
func PortNoProto(p int32) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(p)
	return networkingv1.NetworkPolicyPort{Port: &v}
}

// PortSpan is the ports first..last (endPort) of proto.
func PortSpan(proto corev1.Protocol, first, last int32) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(first)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v, EndPort: &last}
}

// Named is a named port with the protocol left to its default (TCP).
func Named(name string) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Port: &v}
}

func NamedPortProto(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	p := Named(name)
	p.Protocol = &proto
	return p
}

// ProtoOnly matches every port of proto.
func ProtoOnly(proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto}
}

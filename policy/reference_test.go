package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	klabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// reference decides a flow straight from the API objects, the way the NetworkPolicy
// documentation reads, with apimachinery's selectors: no compilation, no sharing, no
// grouping. It is slow and obviously right, and the compiled path must agree with it.
type reference struct {
	in Input
}

func (r reference) nsLabels(name string) klabels.Set {
	for _, n := range r.in.Namespaces {
		if n.Name == name {
			l := klabels.Set{}
			for k, v := range n.Labels {
				l[k] = v
			}
			l[NamespaceNameLabel] = name
			return l
		}
	}
	return klabels.Set{NamespaceNameLabel: name}
}

func sel(t *testing.T, s *metav1.LabelSelector) klabels.Selector {
	out, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// peerMatches: does peer (of a policy in ns) match the remote side (pod, may be nil, at addr)?
func (r reference) peerMatches(t *testing.T, ns string, p networkingv1.NetworkPolicyPeer, remote *corev1.Pod, addr netip.Addr) bool {
	if p.IPBlock != nil {
		c := netip.MustParsePrefix(p.IPBlock.CIDR)
		if !c.Contains(addr) {
			return false
		}
		for _, e := range p.IPBlock.Except {
			if netip.MustParsePrefix(e).Contains(addr) {
				return false
			}
		}
		return true
	}
	if remote == nil {
		return false
	}
	if p.NamespaceSelector == nil {
		if remote.Namespace != ns {
			return false
		}
	} else if !sel(t, p.NamespaceSelector).Matches(r.nsLabels(remote.Namespace)) {
		return false
	}
	return p.PodSelector == nil || sel(t, p.PodSelector).Matches(klabels.Set(remote.Labels))
}

func portMatches(p networkingv1.NetworkPolicyPort, dst *corev1.Pod, proto corev1.Protocol, port int32) bool {
	pp := corev1.ProtocolTCP
	if p.Protocol != nil {
		pp = *p.Protocol
	}
	if pp != proto {
		return false
	}
	if p.Port == nil {
		return true
	}
	if p.Port.Type == intstr.String {
		if dst == nil {
			return false
		}
		for _, c := range dst.Spec.Containers {
			for _, cp := range c.Ports {
				cpp := cp.Protocol
				if cpp == "" {
					cpp = corev1.ProtocolTCP
				}
				if cp.Name == p.Port.StrVal && cpp == proto && cp.ContainerPort == port {
					return true
				}
			}
		}
		return false
	}
	if p.EndPort != nil {
		return p.Port.IntVal <= port && port <= *p.EndPort
	}
	return p.Port.IntVal == port
}

func types(np *networkingv1.NetworkPolicy) (ing, eg bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		ing = ing || t == networkingv1.PolicyTypeIngress
		eg = eg || t == networkingv1.PolicyTypeEgress
	}
	return ing, eg
}

func (r reference) allowed(t *testing.T, src, dst *corev1.Pod, proto corev1.Protocol, port int32) bool {
	srcIP, dstIP := netip.MustParseAddr(src.Status.PodIP), netip.MustParseAddr(dst.Status.PodIP)
	side := func(self, remote *corev1.Pod, remoteIP netip.Addr, egress bool) bool {
		isolated := false
		for i := range r.in.Policies {
			np := &r.in.Policies[i]
			ing, eg := types(np)
			if np.Namespace != self.Namespace || !sel(t, &np.Spec.PodSelector).Matches(klabels.Set(self.Labels)) {
				continue
			}
			if egress && eg {
				isolated = true
				for _, rule := range np.Spec.Egress {
					peerOK := len(rule.To) == 0
					for _, p := range rule.To {
						peerOK = peerOK || r.peerMatches(t, np.Namespace, p, remote, remoteIP)
					}
					portOK := len(rule.Ports) == 0
					for _, p := range rule.Ports {
						portOK = portOK || portMatches(p, remote, proto, port)
					}
					if peerOK && portOK {
						return true
					}
				}
			}
			if !egress && ing {
				isolated = true
				for _, rule := range np.Spec.Ingress {
					peerOK := len(rule.From) == 0
					for _, p := range rule.From {
						peerOK = peerOK || r.peerMatches(t, np.Namespace, p, remote, remoteIP)
					}
					portOK := len(rule.Ports) == 0
					for _, p := range rule.Ports {
						portOK = portOK || portMatches(p, self, proto, port)
					}
					if peerOK && portOK {
						return true
					}
				}
			}
		}
		return !isolated
	}
	return side(src, dst, dstIP, true) && side(dst, src, srcIP, false)
}

// randomWorld makes a small cluster with random labels, named ports and policies.
func randomWorld(rng *rand.Rand) Input {
	var in Input
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	nsNames := []string{"x", "y", "z"}
	for _, n := range nsNames {
		l := map[string]string{}
		if rng.IntN(2) == 0 {
			l["team"] = pick("a", "b")
		}
		in.Namespaces = append(in.Namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: l}})
	}
	nPods := 4 + rng.IntN(6)
	for i := 0; i < nPods; i++ {
		l := map[string]string{"pod": fmt.Sprint("p", i)}
		if rng.IntN(2) == 0 {
			l["app"] = pick("web", "db", "api")
		}
		if rng.IntN(3) == 0 {
			l["tier"] = pick("1", "2")
		}
		var ports []corev1.ContainerPort
		for _, name := range []string{"http", "dns", "alt"} {
			if rng.IntN(2) == 0 {
				ports = append(ports, corev1.ContainerPort{Name: name, ContainerPort: int32(pick3(rng, 80, 81, 8080)),
					Protocol: corev1.Protocol(pick("TCP", "UDP", "SCTP", ""))})
			}
		}
		in.Pods = append(in.Pods, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: pick(nsNames...), Name: fmt.Sprint("p", i), Labels: l},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}},
			Status:     corev1.PodStatus{PodIP: fmt.Sprintf("10.0.%d.%d", rng.IntN(2), 1+i)},
		})
	}
	randSel := func(ns bool) *metav1.LabelSelector {
		s := &metav1.LabelSelector{}
		switch rng.IntN(5) {
		case 0: // empty: everything
		case 1:
			if ns {
				s.MatchLabels = map[string]string{NamespaceNameLabel: pick(nsNames...)}
			} else {
				s.MatchLabels = map[string]string{"app": pick("web", "db", "api")}
			}
		case 2:
			key := pick("app", "tier", "team", NamespaceNameLabel)
			op := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn}[rng.IntN(2)]
			s.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: []string{pick("web", "a", "1", "x"), pick("db", "b", "2", "y")}}}
		case 3:
			op := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}[rng.IntN(2)]
			s.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: pick("app", "tier", "team"), Operator: op}}
		case 4:
			s.MatchLabels = map[string]string{"pod": fmt.Sprint("p", rng.IntN(nPods)), "app": pick("web", "db")}
		}
		return s
	}
	randPeer := func() networkingv1.NetworkPolicyPeer {
		switch rng.IntN(4) {
		case 0:
			return networkingv1.NetworkPolicyPeer{PodSelector: randSel(false)}
		case 1:
			return networkingv1.NetworkPolicyPeer{NamespaceSelector: randSel(true)}
		case 2:
			return networkingv1.NetworkPolicyPeer{PodSelector: randSel(false), NamespaceSelector: randSel(true)}
		}
		b := &networkingv1.IPBlock{CIDR: pick("10.0.0.0/16", "10.0.0.0/24", "10.0.1.0/24", "10.0.0.0/30")}
		if rng.IntN(2) == 0 {
			b.CIDR = "10.0.0.0/16"
			b.Except = []string{pick("10.0.1.0/24", "10.0.0.2/32", "10.0.0.0/29")}
		}
		return networkingv1.NetworkPolicyPeer{IPBlock: b}
	}
	randPorts := func() []networkingv1.NetworkPolicyPort {
		var out []networkingv1.NetworkPolicyPort
		for n := rng.IntN(3); n > 0; n-- {
			var p networkingv1.NetworkPolicyPort
			if rng.IntN(3) > 0 {
				proto := corev1.Protocol(pick("TCP", "UDP", "SCTP"))
				p.Protocol = &proto
			}
			switch rng.IntN(4) {
			case 0: // protocol only
			case 1:
				v := intstr.FromInt32(int32(pick3(rng, 80, 81, 8080)))
				p.Port = &v
			case 2:
				v := intstr.FromInt32(80)
				end := int32(pick3(rng, 80, 81, 8080))
				p.Port, p.EndPort = &v, &end
			case 3:
				v := intstr.FromString(pick("http", "dns", "alt", "none"))
				p.Port = &v
			}
			out = append(out, p)
		}
		return out
	}
	for i, n := 0, 1+rng.IntN(5); i < n; i++ {
		np := networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: pick(nsNames...), Name: fmt.Sprint("np", i)}}
		np.Spec.PodSelector = *randSel(false)
		for j := rng.IntN(3); j > 0; j-- {
			var r networkingv1.NetworkPolicyIngressRule
			for k := rng.IntN(3); k > 0; k-- {
				r.From = append(r.From, randPeer())
			}
			r.Ports = randPorts()
			np.Spec.Ingress = append(np.Spec.Ingress, r)
		}
		for j := rng.IntN(3); j > 0; j-- {
			var r networkingv1.NetworkPolicyEgressRule
			for k := rng.IntN(3); k > 0; k-- {
				r.To = append(r.To, randPeer())
			}
			r.Ports = randPorts()
			np.Spec.Egress = append(np.Spec.Egress, r)
		}
		switch rng.IntN(4) {
		case 0: // defaults
		case 1:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		case 2:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		case 3:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		}
		in.Policies = append(in.Policies, np)
	}
	return in
}

func pick3(rng *rand.Rand, v ...int) int { return v[rng.IntN(len(v))] }

// TestAgainstReference compiles many random clusters and checks every flow's verdict
// against the reference reading of the API objects.
func TestAgainstReference(t *testing.T) {
	seeds := 400
	if testing.Short() {
		seeds = 50
	}
	for seed := 0; seed < seeds; seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		in := randomWorld(rng)
		set, err := Compile(in, Options{})
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		ref := reference{in}
		for i := range in.Pods {
			for j := range in.Pods {
				if i == j || in.Pods[i].Status.PodIP == in.Pods[j].Status.PodIP {
					continue
				}
				src, dst := &in.Pods[i], &in.Pods[j]
				for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
					for _, port := range []int32{80, 81, 8080} {
						p, _ := protocolOf(&proto)
						v, err := set.Decide(Flow{SrcPod: src.Namespace + "/" + src.Name, DstPod: dst.Namespace + "/" + dst.Name, Protocol: p, Port: uint16(port)})
						if err != nil {
							t.Fatalf("seed %d: %v", seed, err)
						}
						if want := ref.allowed(t, src, dst, proto, port); v.Allowed != want {
							t.Fatalf("seed %d: %s/%s → %s/%s %s/%d: compiled says %v, reference %v\n%s\npolicies: %+v",
								seed, src.Namespace, src.Name, dst.Namespace, dst.Name, proto, port, v.Allowed, want, v, in.Policies)
						}
					}
				}
			}
		}
	}
}

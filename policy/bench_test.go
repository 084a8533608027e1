package policy

import (
	"fmt"
	. "github.com/patronus/patronus/policy/npbuild"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// scaleInput builds a cluster of nPods pods in 20 namespaces (10 apps per namespace,
// two named container ports each) and nPolicies policies of the kinds real clusters use:
// default deny, same-namespace app-to-app on a port, cross-namespace by namespace
// label with matchExpressions, egress to an app by named port, and egress to CIDRs.
func scaleInput(nPods, nPolicies int) Input {
	const nNS = 20
	var in Input
	for n := 0; n < nNS; n++ {
		team := "a"
		if n%2 == 1 {
			team = "b"
		}
		in.Namespaces = append(in.Namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("ns%d", n), Labels: map[string]string{NamespaceNameLabel: fmt.Sprintf("ns%d", n), "team": team}}})
	}
	for i := 0; i < nPods; i++ {
		ip := fmt.Sprintf("10.%d.%d.%d", 1+i/65536, (i/256)%256, i%256)
		in.Pods = append(in.Pods, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns%d", i%nNS), Name: fmt.Sprintf("pod-%d", i),
				Labels: map[string]string{"app": fmt.Sprintf("app%d", (i/nNS)%10), "tier": []string{"web", "api", "db"}[i%3]}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
		})
	}
	for i := 0; i < nPolicies; i++ {
		ns := fmt.Sprintf("ns%d", i%nNS)
		app := fmt.Sprintf("app%d", (i/nNS)%10)
		p := networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pol-%d", i)}}
		switch i % 5 {
		case 0:
			p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		case 1:
			p.Spec.PodSelector = *Labels("app", app)
			p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{From(Peers(PodPeer(Labels("tier", "web"))), Port(pTCP, 8080))}
		case 2:
			p.Spec.PodSelector = *Labels("app", app)
			p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{
				From(Peers(NsPodPeer(Expr("team", metav1.LabelSelectorOpIn, "a"), Expr("tier", metav1.LabelSelectorOpNotIn, "db"))), Named("http")),
				From(Peers(NsPeer(Labels("team", "b"))), Named("metrics"), PortSpan(pTCP, 9000, 9100)),
			}
		case 3:
			p.Spec.PodSelector = *Labels("tier", "api")
			p.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{
				To(Peers(NsPodPeer(all, Labels("tier", "db"))), Named("http")),
				To(Peers(IPPeer("10.0.0.0/8", "10.1.0.0/24")), Port(pUDP, 53)),
			}
		case 4:
			p.Spec.PodSelector = *Labels("app", app)
			p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
			p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{From(Peers(PodPeer(all)))}
			p.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{To(Peers(NsPeer(nsName(ns))), Port(pTCP, 5432))}
		}
		in.Policies = append(in.Policies, p)
	}
	return in
}

func BenchmarkCompile(b *testing.B) {
	for _, size := range []struct{ pods, policies int }{{100, 50}, {1000, 500}} {
		in := scaleInput(size.pods, size.policies)
		b.Run(fmt.Sprintf("pods=%d/policies=%d", size.pods, size.policies), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Compile(in, Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecide(b *testing.B) {
	in := scaleInput(1000, 500)
	s, err := Compile(in, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		src, dst := &s.Endpoints[i%len(s.Endpoints)], &s.Endpoints[(i*7+3)%len(s.Endpoints)]
		if _, err := s.Decide(Flow{SrcIP: src.IPs[0], DstIP: dst.IPs[0], Protocol: TCP, Port: 8080}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// The scale input must compile without problems and isolate something, or the benchmark
// measures nothing.
func TestScaleInputCompiles(t *testing.T) {
	s, err := Compile(scaleInput(1000, 500), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var iso, rules int
	for _, ep := range s.Endpoints {
		if ep.IngressIsolated || ep.EgressIsolated {
			iso++
		}
		rules += len(ep.Ingress) + len(ep.Egress)
	}
	if len(s.Endpoints) != 1000 || iso == 0 || rules == 0 {
		t.Fatalf("endpoints=%d isolated=%d rules=%d", len(s.Endpoints), iso, rules)
	}
	t.Logf("endpoints=%d isolated=%d rules=%d", len(s.Endpoints), iso, rules)
}

package policy

import (
	"fmt"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/patronus/patronus/policy/netpolcases"
)

// The 49 data-plane scenarios of the upstream NetworkPolicy e2e suite (package
// netpolcases), replayed on the compiler and Decide with pod IPs. integration/policy
// replays the same list through the agent and the kernel.

// world as a netpolcases.Cluster (logical namespace names are the real ones here).
func (w *world) Apply(pols ...networkingv1.NetworkPolicy)           { w.apply(pols...) }
func (w *world) DeleteAllPolicies()                                 { w.policies = nil }
func (w *world) LabelNamespace(ns string, labels map[string]string) { w.labelNamespace(ns, labels) }
func (w *world) LabelPod(pod string, labels map[string]string)      { w.labelPod(pod, labels) }
func (w *world) PodIP(pod string) string                            { return w.podIP(pod) }

func TestUpstreamScenarios(t *testing.T) {
	list := netpolcases.Scenarios(nil)
	if len(list) != 49 {
		t.Fatalf("%d scenarios, want 49", len(list))
	}
	for i, sc := range list {
		if sc.Num != i+1 {
			t.Fatalf("scenario %d numbered %d", i+1, sc.Num)
		}
		t.Run(fmt.Sprintf("%02d-%s", sc.Num, sc.Name), func(t *testing.T) {
			w := newWorld(strings.ReplaceAll(strings.Join(sc.Pods, " "), "/", ""))
			// Before any policy, everything is allowed (the harness checks this first too).
			w.check(t, w.compile(t), TCP, 80, func(string, string) bool { return true })
			for si, st := range sc.Steps {
				st.Do(w)
				s := w.compile(t)
				for _, p := range st.Probes {
					proto, err := ParseProtocol(string(p.Protocol))
					if err != nil {
						t.Fatal(err)
					}
					t.Run(fmt.Sprintf("step%d-%s-%d", si+1, proto, p.Port), func(t *testing.T) {
						w.check(t, s, proto, uint16(p.Port), p.Expect.Allowed)
					})
				}
			}
		})
	}
}

// A scenario's expectation must be able to fail: the compiled verdicts of scenario 1
// disagree with an all-allowed matrix.
func TestUpstreamScenarioCanFail(t *testing.T) {
	sc := netpolcases.Scenarios(nil)[0]
	w := newWorld(strings.ReplaceAll(strings.Join(sc.Pods, " "), "/", ""))
	sc.Steps[0].Do(w)
	s := w.compile(t)
	v, err := s.Decide(Flow{SrcPod: "y/a", DstPod: "x/a", Protocol: TCP, Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	if v.Allowed || sc.Steps[0].Probes[0].Expect.Allowed("y/a", "x/a") {
		t.Fatalf("default-deny-ingress: y/a→x/a allowed=%v, expectation allows %v; both must be false", v.Allowed,
			sc.Steps[0].Probes[0].Expect.Allowed("y/a", "x/a"))
	}
}

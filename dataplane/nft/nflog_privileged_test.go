package nft

import (
	"context"
	"testing"
	"time"

	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/policy"
)

// TestLogReader: with a LogGroup, a denied packet comes back over NFLOG as a deny event
// naming the endpoint, direction, policies, addresses and ports; an allowed one does not.
func TestLogReader(t *testing.T) {
	tp := enforcetest.NewTopology(t, 3)
	tp.ServeAll(t)
	tp.NodeSysctl(t, "net/bridge/bridge-nf-call-iptables", "1")
	e, err := New(Options{NetNS: tp.Node.Path(), LogGroup: DefaultLogGroup})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	eps := policyAB(tp)
	eps[1].IngressPolicies = []string{"ns/b-in"}
	eps[0].EgressPolicies = []string{"ns/a-out"}
	if err := e.Set(context.Background(), eps); err != nil {
		t.Fatal(err)
	}
	rd, err := e.LogReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	tp.Check(t, "policy", []enforcetest.Probe{pr(0, 1, "tcp", 8080, true), pr(2, 1, "tcp", 8080, false), pr(0, 2, "udp", 5353, false)})

	want := map[string]func(enforce.Event) bool{
		"c -> b tcp/8080 ingress": func(ev enforce.Event) bool {
			return ev.Endpoint == "ns/b" && ev.Direction == enforce.Ingress && ev.Src.Addr() == tp.Pods[2].IP &&
				ev.Dst == tp.Pods[1].AddrPort(8080) && ev.Protocol == policy.TCP && len(ev.Policies) == 1 && ev.Policies[0] == "ns/b-in"
		},
		"a -> c udp/5353 egress": func(ev enforce.Event) bool {
			return ev.Endpoint == "ns/a" && ev.Direction == enforce.Egress && ev.Src.Addr() == tp.Pods[0].IP &&
				ev.Dst == tp.Pods[2].AddrPort(5353) && ev.Protocol == policy.UDP && len(ev.Policies) == 1 && ev.Policies[0] == "ns/a-out"
		},
	}
	_ = rd.SetDeadline(time.Now().Add(3 * time.Second))
	for len(want) > 0 {
		evs, err := rd.Read()
		if err != nil {
			t.Fatalf("still missing %d events: %v", len(want), err)
		}
		for _, ev := range evs {
			if ev.Verdict != enforce.Denied {
				t.Errorf("event with verdict %v", ev.Verdict)
			}
			if ev.Src.Addr() == tp.Pods[0].IP && ev.Dst.Port() == 8080 {
				t.Errorf("allowed a -> b tcp/8080 reported as denied: %+v", ev)
			}
			for k, f := range want {
				if f(ev) {
					delete(want, k)
					a := ev.Audit()
					if a.Verdict != "deny" || a.Port != ev.Dst.Port() || a.Policy == "" {
						t.Errorf("audit record %+v", a)
					}
				}
			}
		}
	}
}

package agent

import (
	"testing"

	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/policy"
	"github.com/patronus/patronus/qos"
)

func TestPolicyLabel(t *testing.T) {
	rule := policy.Rule{Policy: "x/allow-b"}
	for _, tc := range []struct {
		name string
		ep   enforce.Endpoint
		dir  enforce.Direction
		want string
	}{
		{"deny-all ingress", enforce.Endpoint{EndpointPolicy: policy.EndpointPolicy{IngressIsolated: true, IngressPolicies: []string{"x/deny"}}}, enforce.Ingress, PolicyDefaultDeny},
		{"rules ingress", enforce.Endpoint{EndpointPolicy: policy.EndpointPolicy{IngressIsolated: true,
			IngressPolicies: []string{"x/deny", "x/allow-b"}, Ingress: []policy.Rule{rule}}}, enforce.Ingress, "allow-b,deny"},
		{"egress uses egress", enforce.Endpoint{EndpointPolicy: policy.EndpointPolicy{EgressIsolated: true,
			EgressPolicies: []string{"x/eg"}, Ingress: []policy.Rule{rule}}}, enforce.Egress, PolicyDefaultDeny},
		{"egress rules", enforce.Endpoint{EndpointPolicy: policy.EndpointPolicy{EgressIsolated: true,
			EgressPolicies: []string{"x/eg"}, Egress: []policy.Rule{{Policy: "x/eg"}}}}, enforce.Egress, "eg"},
	} {
		if got := policyLabel(tc.ep, tc.dir); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestQoSPriority(t *testing.T) {
	for c, want := range map[qos.Class]uint32{qos.LatencySensitive: 6, qos.Bulk: 2, qos.BestEffort: 0, "": 0} {
		if got := QoSPriority(c); got != want {
			t.Errorf("%q: got %d, want %d", c, got, want)
		}
	}
}

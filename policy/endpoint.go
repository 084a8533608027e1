package policy

import "slices"

// Equal reports whether two endpoint policies are the same, so a datapath can skip
// reprogramming endpoints a recompilation did not change.
func (e *EndpointPolicy) Equal(o *EndpointPolicy) bool {
	return e.Namespace == o.Namespace && e.Pod == o.Pod &&
		e.IngressIsolated == o.IngressIsolated && e.EgressIsolated == o.EgressIsolated &&
		slices.Equal(e.IPs, o.IPs) &&
		slices.Equal(e.IngressPolicies, o.IngressPolicies) && slices.Equal(e.EgressPolicies, o.EgressPolicies) &&
		slices.EqualFunc(e.Ingress, o.Ingress, Rule.Equal) && slices.EqualFunc(e.Egress, o.Egress, Rule.Equal)
}

// Equal reports whether two rules are the same (same origin, peers and ports, in order).
func (r Rule) Equal(o Rule) bool {
	return r.Policy == o.Policy && r.Index == o.Index &&
		slices.Equal(r.Ports, o.Ports) && slices.EqualFunc(r.Peers, o.Peers, Peer.Equal)
}

// Equal reports whether two peers are the same prefix with the same exceptions, in order.
func (p Peer) Equal(o Peer) bool {
	return p.Prefix == o.Prefix && slices.Equal(p.Except, o.Except)
}

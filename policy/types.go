// Package policy compiles Kubernetes NetworkPolicy objects, pods and namespaces into
// per-endpoint rule sets that the datapaths (eBPF in bpf/ and dataplane/, nftables in
// dataplane/) load, and answers "is this flow allowed, and why" for the CLI. It needs no
// kernel and no API server: everything is a pure function of its inputs.
package policy

import "net/netip"

// Protocol is an IP protocol number.
type Protocol uint8

// Protocols NetworkPolicy knows.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

// PortRange allows destination ports First..Last (inclusive) of one protocol.
// First == 0 && Last == 0 means every port of that protocol.
type PortRange struct {
	Protocol    Protocol
	First, Last uint16
}

// Peer is a set of remote addresses: Prefix minus every prefix in Except.
// A pod matched by a selector is a Peer with its /32 (or /128) and no Except.
type Peer struct {
	Prefix netip.Prefix
	Except []netip.Prefix
}

// Rule allows traffic from (ingress) or to (egress) any of Peers on any of Ports.
// Empty Peers means any address; empty Ports means every port and protocol.
// Named ports are already resolved: for ingress against the endpoint's own container
// ports, for egress against each peer pod's ports (so one API rule may compile into
// several Rules with different Peers and Ports).
type Rule struct {
	Policy string // "namespace/name" of the NetworkPolicy this rule comes from
	Index  int    // index of the rule inside that policy's ingress or egress list
	Peers  []Peer
	Ports  []PortRange
}

// EndpointPolicy is everything the datapath needs for one local pod.
// A direction that is not isolated allows everything in that direction, whatever the
// rules; an isolated direction allows only what some rule allows (plus replies of
// connections allowed in the other direction, which the datapath's conntrack handles).
type EndpointPolicy struct {
	Namespace, Pod  string
	IPs             []netip.Addr
	IngressIsolated bool
	EgressIsolated  bool
	// Policies that select this pod, per direction, "namespace/name", sorted.
	IngressPolicies, EgressPolicies []string
	Ingress, Egress                 []Rule
}

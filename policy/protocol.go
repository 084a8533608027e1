package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// String returns the Kubernetes name of the protocol ("TCP", "UDP", "SCTP"), or its number.
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return strconv.Itoa(int(p))
}

// ParseProtocol accepts the protocol names NetworkPolicy knows, in any letter case.
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "TCP":
		return TCP, nil
	case "UDP":
		return UDP, nil
	case "SCTP":
		return SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q: use TCP, UDP or SCTP", s)
}

// protocolOf maps an API protocol (nil means TCP, the API default) to a Protocol.
// The API spells protocols exactly, so no case folding here.
func protocolOf(p *corev1.Protocol) (Protocol, error) {
	if p == nil {
		return TCP, nil
	}
	switch *p {
	case corev1.ProtocolTCP:
		return TCP, nil
	case corev1.ProtocolUDP:
		return UDP, nil
	case corev1.ProtocolSCTP:
		return SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q: use TCP, UDP or SCTP", string(*p))
}

// String formats the range as "TCP/80", "TCP/8000-8080" or "TCP/*".
func (r PortRange) String() string {
	switch {
	case r.First == 0 && r.Last == 0:
		return r.Protocol.String() + "/*"
	case r.First == r.Last:
		return fmt.Sprintf("%s/%d", r.Protocol, r.First)
	}
	return fmt.Sprintf("%s/%d-%d", r.Protocol, r.First, r.Last)
}

// Allows reports whether the range covers port of protocol proto.
func (r PortRange) Allows(proto Protocol, port uint16) bool {
	if r.Protocol != proto {
		return false
	}
	if r.First == 0 && r.Last == 0 {
		return true
	}
	return r.First <= port && port <= r.Last
}

// Contains reports whether addr is in Prefix and in none of Except.
func (p Peer) Contains(addr netip.Addr) bool {
	addr = addr.Unmap()
	if !p.Prefix.Contains(addr) {
		return false
	}
	for _, e := range p.Except {
		if e.Contains(addr) {
			return false
		}
	}
	return true
}

// String formats the peer as its prefix, followed by " except a, b" when there are exceptions.
func (p Peer) String() string {
	if len(p.Except) == 0 {
		return p.Prefix.String()
	}
	var b strings.Builder
	b.WriteString(p.Prefix.String())
	b.WriteString(" except ")
	for i, e := range p.Except {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(e.String())
	}
	return b.String()
}

// AllowsPeer reports whether addr is one of the rule's peers (any address when Peers is empty).
func (r *Rule) AllowsPeer(addr netip.Addr) bool {
	if len(r.Peers) == 0 {
		return true
	}
	for i := range r.Peers {
		if r.Peers[i].Contains(addr) {
			return true
		}
	}
	return false
}

// AllowsPort reports whether the rule covers port of proto (everything when Ports is empty).
func (r *Rule) AllowsPort(proto Protocol, port uint16) bool {
	if len(r.Ports) == 0 {
		return true
	}
	for _, pr := range r.Ports {
		if pr.Allows(proto, port) {
			return true
		}
	}
	return false
}

// Allows reports whether the rule allows a flow with remote address addr to port/proto.
func (r *Rule) Allows(addr netip.Addr, proto Protocol, port uint16) bool {
	return r.AllowsPort(proto, port) && r.AllowsPeer(addr)
}

// MarshalText writes the protocol's name, so JSON and YAML show "TCP" rather than 6.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText accepts a protocol name or number.
func (p *Protocol) UnmarshalText(b []byte) error {
	if n, err := strconv.ParseUint(string(b), 10, 8); err == nil {
		*p = Protocol(n)
		return nil
	}
	v, err := ParseProtocol(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

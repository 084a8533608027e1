package nodenet

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The node→gateway leg of traffic to remote clusters. A node that is not the gateway
// routes the remote clusters' pod CIDRs to the gateway node (agent/tunnel.go). With node
// encryption on, that leg can go over WGDevice instead of the underlay: Compute already
// gives the entry gateway's peer entry the remote CIDRs (Local.Remote) as allowed IPs,
// so WireGuard's cryptokey routing sends them to that peer and accepts the answers
// from it. RemoteLeg says for which CIDRs that holds on the live device, so the caller
// routes exactly those `dev ptw0` and keeps the plain route (with a reason) for the rest.

// RemoteLeg is how the remote clusters' pod CIDRs may leave a node that is not the gateway.
type RemoteLeg struct {
	// Encrypted are the CIDRs the gateway's peer on WGDevice allows: route them over it.
	Encrypted []netip.Prefix
	// Plain are the CIDRs left in the clear although encryption is on, and Reason why
	// (both empty with encryption off: plain is then what was asked for).
	Plain  []netip.Prefix
	Reason string
	// Strict: strict node encryption is in force, so the Plain CIDRs' traffic is dropped
	// (chain nodenet-strict) instead of sent in the clear.
	Strict bool
}

// Reasons the remote clusters' traffic leaves in the clear with encryption on.
const (
	LegNoDevice     = "this node's WireGuard device is not up"
	LegNoGatewayKey = "the gateway node published no WireGuard key (yet)"
	LegNotPeer      = "the gateway node's WireGuard key is not a peer of this node's device (yet)"
	LegNotAllowed   = "the gateway node's WireGuard peer does not carry this CIDR (another node is the remote clusters' entry gateway here, or the CIDR overlaps a node block)"
	// LegStrictDropped replaces "in the clear" in RemoteLeg.String under strict mode.
	LegStrictDropped = "DROPPED by strict node encryption (not sent in the clear)"
)

// DecideRemoteLeg is the pure decision: st is the controller's status, dev the live
// device (nil: none), gateway the gateway node's name and gwKey its published key (zero:
// none), remote the CIDRs routed to it. A CIDR is encrypted only when the device holds a
// peer with the gateway's key whose allowed IPs cover it: WireGuard then sends it to that
// peer and no other (allowed IPs are unique across peers), and the gateway, which has
// this node's block on its own peer entry, forwards it into the inter-cluster tunnel.
// Anything short of that keeps the plain route, because a `dev ptw0` route without a
// covering peer drops the traffic.
func DecideRemoteLeg(st Status, dev *wgtypes.Device, gateway string, gwKey wgtypes.Key, remote []netip.Prefix) RemoteLeg {
	var leg RemoteLeg
	if st.Encryption != EncryptionWireGuard || len(remote) == 0 {
		return leg
	}
	leg.Strict = st.Strict
	plain := func(reason string) RemoteLeg {
		return RemoteLeg{Plain: slices.Clone(remote), Reason: reason, Strict: st.Strict}
	}
	switch {
	case st.WireGuard == nil || st.WireGuard.PublicKey == "" || dev == nil:
		return plain(LegNoDevice)
	case st.WireGuard.Error != "":
		return plain(LegNoDevice + ": " + st.WireGuard.Error)
	case gwKey == (wgtypes.Key{}):
		return plain(LegNoGatewayKey)
	}
	i := slices.IndexFunc(dev.Peers, func(p wgtypes.Peer) bool { return p.PublicKey == gwKey })
	if i < 0 {
		// The gateway rotated its key (rotate.go) and gwKey is the caller's older (or
		// newer) reading of its annotation: the peer carrying the gateway node's own
		// block(s) is the gateway's peer whatever its key, since nodenet gives a node's
		// blocks only to that node's peer and allowed IPs are unique on a device. Without
		// this the leg would fall back to the clear until the caller re-read the Node.
		i = peerCarrying(st, dev, gateway)
	}
	if i < 0 {
		reason := LegNotPeer
		// nodenet's own view says why when it routes the gateway node in the clear.
		for _, ps := range st.PeerStates {
			if ps.Node == gateway && !ps.Encrypted && ps.Reason != "" {
				reason += ": " + ps.Reason
			}
		}
		return plain(reason)
	}
	allowed := dev.Peers[i].AllowedIPs
	for _, r := range remote {
		if slices.ContainsFunc(allowed, func(a net.IPNet) bool { return covers(a, r) }) {
			leg.Encrypted = append(leg.Encrypted, r)
		} else {
			leg.Plain = append(leg.Plain, r)
		}
	}
	if len(leg.Plain) > 0 {
		leg.Reason = LegNotAllowed
	}
	return leg
}

// peerCarrying is the index of dev's peer whose allowed IPs cover every block nodenet
// routes to node over the device (st.PeerStates), or -1.
func peerCarrying(st Status, dev *wgtypes.Device, node string) int {
	i := slices.IndexFunc(st.PeerStates, func(ps PeerState) bool { return ps.Node == node && ps.Encrypted && len(ps.Blocks) > 0 })
	if i < 0 {
		return -1
	}
	blocks := st.PeerStates[i].Blocks
	return slices.IndexFunc(dev.Peers, func(p wgtypes.Peer) bool {
		for _, b := range blocks {
			if !slices.ContainsFunc(p.AllowedIPs, func(a net.IPNet) bool { return covers(a, b) }) {
				return false
			}
		}
		return true
	})
}

// String is the leg for logs and status texts ("" with nothing in the clear): the plain
// CIDRs "in the clear", or under strict mode "DROPPED by strict node encryption".
func (l RemoteLeg) String() string {
	if len(l.Plain) == 0 {
		return ""
	}
	ps := make([]string, len(l.Plain))
	for i, p := range l.Plain {
		ps[i] = p.String()
	}
	what := "in the clear"
	if l.Strict {
		what = LegStrictDropped
	}
	return fmt.Sprintf("%s %s: %s", strings.Join(ps, ", "), what, l.Reason)
}

// RemoteLeg is DecideRemoteLeg on the controller's current status and live device.
func (c *Controller) RemoteLeg(gateway string, gwKey wgtypes.Key, remote []netip.Prefix) RemoteLeg {
	st, live := c.snapshot()
	var dev *wgtypes.Device
	if live != nil {
		if d, err := live.State(); err == nil {
			dev = d
		}
	}
	return DecideRemoteLeg(st, dev, gateway, gwKey, remote)
}

// covers: allowed IP range a contains all of r.
func covers(a net.IPNet, r netip.Prefix) bool {
	ones, bits := a.Mask.Size()
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok || bits == 0 {
		return false
	}
	if bits == 128 && ip.Is4In6() {
		ones -= 96
	}
	p := netip.PrefixFrom(ip.Unmap(), ones).Masked()
	r = r.Masked()
	return p.Addr().BitLen() == r.Addr().BitLen() && p.Bits() <= r.Bits() && p.Contains(r.Addr())
}

package nodenet

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/dataplane/wg"
)

// VXLAN device parameters (docs/CONTRACT.md).
const (
	VXLANDevice = "ptx0"
	VXLANID     = 1
	VXLANPort   = 4789
	// RouteProtocol marks the node-to-node routes nodenet owns (`ip route show proto
	// 78`). It differs from the tunnel dataplane's 77 because dataplane/route makes the
	// whole set of proto-77 routes match one desired set: two owners of one number in the
	// same namespace would delete each other's routes.
	RouteProtocol = 78
)

// Peer is another node of the cluster as the API (or the mesh) shows it.
type Peer struct {
	Name   string
	Addr   netip.Addr     // underlay (InternalIP)
	Blocks []netip.Prefix // pod blocks
	// Key is the peer's node-to-node WireGuard public key (zero: it published none, so
	// with encryption on it keeps the plain route: mixed rollout).
	Key wgtypes.Key
	// Gateway: the Node is marked patronus.io/gateway=true (see Local.Remote).
	Gateway bool
}

// Local is this node's side.
type Local struct {
	Name  string
	Addr  netip.Addr   // underlay address
	Net   netip.Prefix // the underlay address's subnet on Dev: peers in it are L2 neighbours
	Dev   string       // the underlay interface
	Block netip.Prefix // this node's pod block (may be zero)
	// Encrypt routes the blocks of peers that published a Key over the node WireGuard
	// device (WGDevice), one WireGuard peer each (endpoint Addr:WGPort, allowed IPs = its
	// blocks); the others keep the direct or VXLAN route. It needs Block (the device's
	// address, the source of the node's own traffic to peer pods) and Key.
	Encrypt bool
	Key     wgtypes.Key // this node's public key (a peer showing it is a clone: plain)
	WGPort  int         // the peers' listen port (0: WGPort)
	// Remote are the remote clusters' pod CIDRs. Their traffic enters the cluster at the
	// gateway the remote clusters pick (the marked gateway with the smallest name; with
	// none marked, the node with the smallest name), which forwards it to the pod's node:
	// over the WireGuard device when encrypted, so that gateway's peer entry also allows
	// these sources (WireGuard drops sources outside a peer's allowed IPs).
	Remote []netip.Prefix
	// Gateway: this node is marked patronus.io/gateway=true.
	Gateway bool
}

// Route is one node-to-node route.
type Route struct {
	Dst    netip.Prefix `json:"dst"`
	Via    netip.Addr   `json:"via"`
	Dev    string       `json:"dev"`
	OnLink bool         `json:"onlink,omitempty"` // VXLAN: the next hop is the peer's VTEP address, known by a neighbour entry
}

func (r Route) String() string {
	if !r.Via.IsValid() {
		return fmt.Sprintf("%s dev %s", r.Dst, r.Dev) // over the WireGuard device
	}
	s := fmt.Sprintf("%s via %s dev %s", r.Dst, r.Via, r.Dev)
	if r.OnLink {
		s += " onlink"
	}
	return s
}

// Neigh is a static neighbour (VTEP address → VTEP MAC) on the VXLAN device.
type Neigh struct {
	IP  netip.Addr
	MAC string
}

// FDB is a forwarding entry on the VXLAN device: frames for MAC go to Dst over UDP.
type FDB struct {
	MAC string
	Dst netip.Addr
}

// Plan is the desired node-to-node datapath.
type Plan struct {
	Routes []Route
	// VXLAN is set when some peer is not on the local L2 segment: ptx0 must exist on
	// Local.Dev with VTEPAddr and VTEPMAC.
	VXLAN    bool
	VTEPAddr netip.Addr
	VTEPMAC  string
	Neighs   []Neigh
	FDB      []FDB
	// Conflicts name peer blocks left out because they overlap this node's block or an
	// earlier peer's (a claim conflict: never route one block two ways).
	Conflicts []string
	// WGPeers are the WireGuard peers of the node device (Local.Encrypt), by node name.
	WGPeers []WGPeer
	// Plain names the routed peers not encrypted although Local.Encrypt is set, with why.
	Plain []PlainPeer
}

// WGPeer is one node-to-node WireGuard peer.
type WGPeer struct {
	Node string
	wg.Peer
}

// PlainPeer is a peer routed without encryption while encryption is on.
type PlainPeer struct {
	Node   string
	Reason string
}

// Reasons a peer is routed in the clear with encryption on.
const (
	PlainNoKey    = "the node published no WireGuard key (yet)"
	PlainNoBlock  = "this node has no pod block yet"
	PlainDupKey   = "the node shows a WireGuard key another node (or this one) already has"
	PlainNoDevice = "this node's WireGuard device is not up"
)

// VTEPMAC is the VXLAN device's MAC for a node with underlay address a: locally
// administered 0e:70 followed by the IPv4 address, so every node computes a peer's MAC
// without an annotation.
func VTEPMAC(a netip.Addr) string {
	b := a.As4()
	return net.HardwareAddr{0x0e, 0x70, b[0], b[1], b[2], b[3]}.String()
}

// VTEPAddr is a node's address on ptx0: its block's network address (as flannel does),
// which no pod uses (host-local starts at the gateway, the first address).
func VTEPAddr(block netip.Prefix) netip.Addr { return block.Masked().Addr() }

// Compute is the pure planner: every peer block gets a direct route via the peer's
// underlay address when the peer is in Local.Net, otherwise a route over ptx0 with the
// neighbour and FDB entries it needs. Peers are taken in name order, so overlaps are
// resolved the same way on every node.
func Compute(local Local, peers []Peer) Plan {
	var p Plan
	ps := slices.Clone(peers)
	slices.SortFunc(ps, func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
	used := overlapSet{}
	if local.Block.IsValid() {
		used.add(local.Block)
	}
	port := local.WGPort
	if port == 0 {
		port = WGPort
	}
	keys := map[wgtypes.Key]bool{local.Key: true, {}: true}
	entry := entryGateway(local, ps)
	for _, peer := range ps {
		if peer.Name == local.Name || !peer.Addr.IsValid() || !peer.Addr.Is4() {
			continue
		}
		direct := local.Net.IsValid() && local.Net.Contains(peer.Addr)
		encrypt, plain := false, ""
		if local.Encrypt {
			switch {
			case peer.Key == (wgtypes.Key{}):
				plain = PlainNoKey
			case !local.Block.IsValid():
				plain = PlainNoBlock
			case local.Key == (wgtypes.Key{}):
				plain = PlainNoDevice
			case keys[peer.Key]:
				plain = PlainDupKey
			default:
				encrypt = true
				keys[peer.Key] = true
			}
		}
		var vtep netip.Addr
		var allowed []netip.Prefix
		for _, b := range peer.Blocks {
			b = b.Masked()
			if !b.IsValid() || !b.Addr().Is4() {
				continue
			}
			if used.overlaps(b) {
				p.Conflicts = append(p.Conflicts, fmt.Sprintf("%s of node %s overlaps another node's block", b, peer.Name))
				continue
			}
			used.add(b)
			if encrypt {
				allowed = append(allowed, b)
				p.Routes = append(p.Routes, Route{Dst: b, Dev: WGDevice})
				continue
			}
			if direct {
				p.Routes = append(p.Routes, Route{Dst: b, Via: peer.Addr, Dev: local.Dev})
				continue
			}
			if !vtep.IsValid() {
				vtep = VTEPAddr(b)
				mac := VTEPMAC(peer.Addr)
				p.Neighs = append(p.Neighs, Neigh{IP: vtep, MAC: mac})
				p.FDB = append(p.FDB, FDB{MAC: mac, Dst: peer.Addr})
			}
			p.Routes = append(p.Routes, Route{Dst: b, Via: vtep, Dev: VXLANDevice, OnLink: true})
		}
		if len(allowed) > 0 {
			if peer.Name == entry {
				for _, r := range local.Remote {
					if r = r.Masked(); r.IsValid() && r.Addr().Is4() && !used.overlaps(r) {
						allowed = append(allowed, r)
					}
				}
			}
			p.WGPeers = append(p.WGPeers, WGPeer{Node: peer.Name, Peer: wg.Peer{PublicKey: peer.Key,
				Endpoint: netip.AddrPortFrom(peer.Addr, uint16(port)), AllowedIPs: allowed}})
		} else if plain != "" && len(peer.Blocks) > 0 {
			p.Plain = append(p.Plain, PlainPeer{Node: peer.Name, Reason: plain})
		}
	}
	if len(p.FDB) > 0 && local.Addr.Is4() && local.Block.IsValid() {
		p.VXLAN, p.VTEPAddr, p.VTEPMAC = true, VTEPAddr(local.Block), VTEPMAC(local.Addr)
	} else if len(p.FDB) > 0 {
		// Without an own block there is no VTEP address: drop the encapsulated routes
		// rather than install half a path.
		p.Conflicts = append(p.Conflicts, "VXLAN peers need this node's block and IPv4 underlay address")
		p.Routes = slices.DeleteFunc(p.Routes, func(r Route) bool { return r.Dev == VXLANDevice })
		p.Neighs, p.FDB = nil, nil
	}
	return p
}

// entryGateway is the node remote clusters' traffic enters through (Local.Remote): the
// marked gateway with the smallest name, or the smallest name when none is marked.
func entryGateway(local Local, peers []Peer) string {
	if len(local.Remote) == 0 {
		return ""
	}
	best, marked := "", false
	consider := func(name string, gw bool) {
		switch {
		case gw && !marked:
			best, marked = name, true
		case gw == marked && (best == "" || name < best):
			best = name
		}
	}
	consider(local.Name, local.Gateway)
	for _, p := range peers {
		consider(p.Name, p.Gateway)
	}
	return best
}

// overlapSet answers "does b overlap a prefix added before" in O(address bits): two
// prefixes overlap exactly when one contains the other, so b overlaps when one of b's
// ancestors (or b) was added, or b is an ancestor of something added.
type overlapSet struct {
	added     map[netip.Prefix]bool
	ancestors map[netip.Prefix]bool // every ancestor of every added prefix, itself included
}

func (s *overlapSet) add(p netip.Prefix) {
	if s.added == nil {
		s.added, s.ancestors = map[netip.Prefix]bool{}, map[netip.Prefix]bool{}
	}
	p = p.Masked()
	s.added[p] = true
	for l := p.Bits(); l >= 0; l-- {
		a, _ := p.Addr().Prefix(l)
		if s.ancestors[a] {
			break // its own ancestors are in already
		}
		s.ancestors[a] = true
	}
}

func (s *overlapSet) overlaps(p netip.Prefix) bool {
	p = p.Masked()
	if s.ancestors[p] {
		return true
	}
	for l := p.Bits(); l >= 0; l-- {
		if a, _ := p.Addr().Prefix(l); s.added[a] {
			return true
		}
	}
	return false
}

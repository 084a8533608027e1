// Package tunnel turns verified mesh state into the tunnel dataplane of a node: WireGuard
// peers for the remote clusters' gateways and routes for their pod CIDRs. Compute is the
// pure core: its input is only what the mesh verified (signed tunnel announcements of
// trusted remote clusters: public key, underlay endpoints, pod CIDRs) plus the
// ConfigMap's remote-clusters entries, which are hints — a hint that disagrees with the
// announced state is returned as a Condition and never programmed. A Reconciler applies
// a Plan through dataplane/wg and dataplane/route (both diff before touching the kernel),
// and a Rotator rotates the node's WireGuard key: new key applied locally first, then
// announced signed through the mesh so peers update on receipt.
package tunnel

import (
	"cmp"
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/dataplane/route"
	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/mesh/announce"
)

// Gateway is one verified gateway of a remote cluster (from a tunnel announcement).
type Gateway struct {
	Cluster   string
	Node      string
	PublicKey wgtypes.Key
	Endpoints []netip.AddrPort
	PodCIDRs  []netip.Prefix
	Expires   time.Time
}

// GatewaysFromAnnouncements extracts the gateways of clusters other than local from
// verified announcements (announce.State.List); other kinds are ignored. Announcements
// that expired or were withdrawn are no longer in the state, so their gateways vanish.
func GatewaysFromAnnouncements(anns []announce.Announcement, local string) []Gateway {
	var out []Gateway
	for _, a := range anns {
		if a.Kind != announce.KindTunnel || a.Withdraw || a.Tunnel == nil || a.Cluster == local {
			continue
		}
		k, err := wgtypes.ParseKey(a.Tunnel.PublicKey)
		if err != nil {
			continue // the receiver validated it; a state restored from disk might not be
		}
		out = append(out, Gateway{Cluster: a.Cluster, Node: a.Origin, PublicKey: k,
			Endpoints: slices.Clone(a.Tunnel.Endpoints), PodCIDRs: slices.Clone(a.Prefixes), Expires: a.ExpiresAt()})
	}
	return out
}

// Announcement is what a gateway announces for its tunnel (signed by mesh.Node.Announce).
func Announcement(pub wgtypes.Key, endpoints []netip.AddrPort, podCIDRs []netip.Prefix) announce.Announcement {
	return announce.Announcement{Kind: announce.KindTunnel, Prefixes: slices.Clone(podCIDRs),
		Tunnel: &announce.Tunnel{PublicKey: base64.StdEncoding.EncodeToString(pub[:]), Endpoints: slices.Clone(endpoints)}}
}

// Hint is a ConfigMap remote-clusters entry as far as tunnels care.
type Hint struct {
	Cluster  string
	CIDRs    []netip.Prefix
	Endpoint string // host:port as configured ("" = none)
}

// Input is everything Compute needs.
type Input struct {
	LocalCluster string
	// Gateway is true on a gateway node: it terminates tunnels. Other nodes route remote
	// pod CIDRs to GatewayAddr on GatewayDev.
	Gateway     bool
	Device      string // the WireGuard interface (gateways)
	GatewayAddr netip.Addr
	GatewayDev  string
	// Table is the routing table for the routes (0 = main).
	Table int
	// Keepalive is the peers' persistent keepalive (0: off; the agent sets
	// DefaultKeepalive). With it on both sides, two gateways adding each other at the
	// same moment would both start a handshake at once and the initiations would cross
	// (no session until WireGuard's 5 s retry); the wg devices prevent that by holding
	// the keepalive of the side with the larger public key (wg.KeepaliveHold).
	Keepalive time.Duration
	// PathEndpoints is, per remote cluster, the underlay endpoint of the path its traffic
	// should take (the path selected for the default QoS class, PathEndpoint). A cluster
	// without one uses its chosen gateway's first announced endpoint. The peer's key and
	// allowed IPs still come only from the verified announcement: the endpoint is only
	// where packets are sent, and WireGuard authenticates everything that comes back.
	PathEndpoints map[string]netip.AddrPort
	// PathDevices are the gateway's per-path devices (index ≥ 1, see PathRefs); with
	// them, every remote cluster's path k (Paths) gets a peer on device k with that path's
	// endpoint and the same key and allowed IPs as the main peer, and no route (the
	// path's traffic is steered onto the device by dataplane/steer).
	PathDevices []PathDevice
	// Paths are the remote clusters' paths (PathRefs of the ConfigMap's remote-clusters).
	Paths    []PathRef
	Gateways []Gateway
	Hints    []Hint
}

// Condition reports something wrong or noteworthy about one remote cluster.
type Condition struct {
	Cluster string `json:"cluster"`
	Type    string `json:"type"`
	Message string `json:"message"`
}

// Condition types.
const (
	CondCIDRMismatch     = "CIDRMismatch"     // ConfigMap cidr differs from the announced pod CIDRs
	CondEndpointMismatch = "EndpointMismatch" // ConfigMap endpoint is not among the announced ones
	CondNotAnnounced     = "NotAnnounced"     // configured, but no verified tunnel announcement
	CondNoEndpoint       = "NoEndpoint"       // announced without an underlay endpoint
	CondPrefixConflict   = "PrefixConflict"   // two clusters announce overlapping prefixes
)

// Tunnel is one active tunnel as `patronus status` shows it.
type Tunnel struct {
	Cluster   string         `json:"cluster"`
	Gateway   string         `json:"gateway"`
	PublicKey string         `json:"publicKey"`
	Endpoint  netip.AddrPort `json:"endpoint"`
	PodCIDRs  []netip.Prefix `json:"podCIDRs"`
	// Paths lists the per-path tunnels to the cluster (only with per-path devices).
	Paths []TunnelPath `json:"paths,omitempty"`
}

// TunnelPath is one path's tunnel to a remote cluster.
type TunnelPath struct {
	PathID   string         `json:"pathId"`
	Device   string         `json:"device"`
	Endpoint netip.AddrPort `json:"endpoint"`
}

// Plan is the desired dataplane.
type Plan struct {
	Peers []wg.Peer
	// PathPeers are the peers of each per-path device (Input.PathDevices; every device
	// has an entry, possibly empty).
	PathPeers  map[string][]wg.Peer
	Routes     []route.Route
	Tunnels    []Tunnel
	Conditions []Condition
}

// DefaultKeepalive is the agent's persistent keepalive (TunnelOptions.Keepalive).
const DefaultKeepalive = 25 * time.Second

// Compute derives the plan. It is deterministic: the same input gives the same plan.
func Compute(in Input) Plan {
	var p Plan
	in.Keepalive = max(in.Keepalive, 0)
	if in.Gateway && len(in.PathDevices) > 0 {
		p.PathPeers = map[string][]wg.Peer{}
		for _, d := range in.PathDevices {
			p.PathPeers[d.Name] = nil
		}
	}
	byCluster := map[string][]Gateway{}
	for _, g := range in.Gateways {
		if g.Cluster == in.LocalCluster {
			continue
		}
		byCluster[g.Cluster] = append(byCluster[g.Cluster], g)
	}
	clusters := make([]string, 0, len(byCluster))
	for c := range byCluster {
		clusters = append(clusters, c)
	}
	slices.Sort(clusters)
	var taken []struct {
		p       netip.Prefix
		cluster string
	}
	for _, c := range clusters {
		gws := byCluster[c]
		// One peer per cluster: WireGuard routes each allowed IP to exactly one peer. The
		// gateway with an endpoint and the smallest node name is chosen, so every node of
		// every cluster picks the same one.
		slices.SortFunc(gws, func(a, b Gateway) int { return cmp.Compare(a.Node, b.Node) })
		var chosen *Gateway
		var cidrs []netip.Prefix
		for i := range gws {
			cidrs = append(cidrs, gws[i].PodCIDRs...)
			if chosen == nil && len(gws[i].Endpoints) > 0 {
				chosen = &gws[i]
			}
		}
		if chosen == nil {
			p.Conditions = append(p.Conditions, Condition{c, CondNoEndpoint, "no gateway of the cluster announces an underlay endpoint"})
			continue
		}
		cidrs = normalize(cidrs)
		var allowed []netip.Prefix
		for _, pf := range cidrs {
			conflict := ""
			for _, t := range taken {
				if t.p.Overlaps(pf) {
					conflict = t.cluster
				}
			}
			if conflict != "" {
				p.Conditions = append(p.Conditions, Condition{c, CondPrefixConflict,
					fmt.Sprintf("%s overlaps a prefix of cluster %s: not programmed", pf, conflict)})
				continue
			}
			taken = append(taken, struct {
				p       netip.Prefix
				cluster string
			}{pf, c})
			allowed = append(allowed, pf)
		}
		if len(allowed) == 0 {
			continue
		}
		ep := chosen.Endpoints[0]
		if pe := in.PathEndpoints[c]; pe.IsValid() {
			ep = pe
		}
		tun := Tunnel{Cluster: c, Gateway: chosen.Node, PublicKey: chosen.PublicKey.String(), Endpoint: ep, PodCIDRs: allowed}
		if in.Gateway {
			p.Peers = append(p.Peers, wg.Peer{PublicKey: chosen.PublicKey, Endpoint: ep, AllowedIPs: allowed, Keepalive: in.Keepalive})
			tun.Paths = p.addPathPeers(in, c, chosen.PublicKey, ep, allowed)
		}
		p.Tunnels = append(p.Tunnels, tun)
		if in.Gateway {
			for _, pf := range allowed {
				p.Routes = append(p.Routes, route.Route{Dst: pf, Dev: in.Device, Table: in.Table})
			}
		} else if in.GatewayAddr.IsValid() && in.GatewayDev != "" {
			for _, pf := range allowed {
				p.Routes = append(p.Routes, route.Route{Dst: pf, Dev: in.GatewayDev, Via: in.GatewayAddr, Table: in.Table})
			}
		}
	}
	p.Conditions = append(p.Conditions, checkHints(in.Hints, byCluster)...)
	return p
}

// addPathPeers adds cluster c's peers on the per-path devices and returns its paths'
// tunnels (none without per-path devices). The main device carries path index 0 with the
// main peer's endpoint.
func (p *Plan) addPathPeers(in Input, c string, key wgtypes.Key, mainEP netip.AddrPort, allowed []netip.Prefix) []TunnelPath {
	if len(in.PathDevices) == 0 {
		return nil
	}
	var out []TunnelPath
	for _, r := range in.Paths {
		if r.Cluster != c {
			continue
		}
		if r.Index == 0 {
			out = append(out, TunnelPath{PathID: r.ID, Device: in.Device, Endpoint: mainEP})
			continue
		}
		dev, ok := r.device(in.PathDevices)
		if !ok {
			continue
		}
		if slices.ContainsFunc(p.PathPeers[dev], func(x wg.Peer) bool { return x.PublicKey == key }) {
			continue // one peer per key on a device (two clusters cannot share a gateway key)
		}
		p.PathPeers[dev] = append(p.PathPeers[dev], wg.Peer{PublicKey: key, Endpoint: r.Endpoint, AllowedIPs: allowed, Keepalive: in.Keepalive})
		out = append(out, TunnelPath{PathID: r.ID, Device: dev, Endpoint: r.Endpoint})
	}
	return out
}

func checkHints(hints []Hint, byCluster map[string][]Gateway) []Condition {
	var out []Condition
	for _, h := range hints {
		gws := byCluster[h.Cluster]
		if len(gws) == 0 {
			out = append(out, Condition{h.Cluster, CondNotAnnounced, "configured in remote-clusters, but no verified tunnel announcement (yet)"})
			continue
		}
		var announced []netip.Prefix
		var eps []string
		for _, g := range gws {
			announced = append(announced, g.PodCIDRs...)
			for _, e := range g.Endpoints {
				eps = append(eps, e.String())
			}
		}
		announced = normalize(announced)
		if hc := normalize(h.CIDRs); len(hc) > 0 && !slices.Equal(hc, announced) {
			out = append(out, Condition{h.Cluster, CondCIDRMismatch,
				fmt.Sprintf("ConfigMap cidr %s, announced %s: the announced prefixes are programmed", join(hc), join(announced))})
		}
		if h.Endpoint != "" && !slices.Contains(eps, h.Endpoint) {
			out = append(out, Condition{h.Cluster, CondEndpointMismatch,
				fmt.Sprintf("ConfigMap endpoint %s, announced %s: the announced endpoint is used", h.Endpoint, strings.Join(eps, ","))})
		}
	}
	return out
}

func normalize(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if p.IsValid() {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return slices.Compact(out)
}

func join(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// RoutesViaGateway is the route set of a node that is not a gateway. Such a node runs no
// mesh, so it has no verified announcements: the remote clusters' pod CIDRs come from the
// ConfigMap's remote-clusters entries, and each is routed to the cluster's gateway node
// (gw, reached on dev). Nothing is trusted by doing so: the gateway forwards into a
// tunnel only what its verified peers' allowed IPs carry. Prefixes of the local cluster
// and duplicates are dropped; the result is sorted.
func RoutesViaGateway(local string, hints []Hint, gw netip.Addr, dev string, table int) []route.Route {
	if !gw.IsValid() || dev == "" {
		return nil
	}
	var cidrs []netip.Prefix
	for _, h := range hints {
		if h.Cluster != local {
			cidrs = append(cidrs, h.CIDRs...)
		}
	}
	var out []route.Route
	for _, p := range normalize(cidrs) {
		if p.Contains(gw) {
			continue // never route the gateway's own address through itself
		}
		out = append(out, route.Route{Dst: p, Dev: dev, Via: gw, Table: table})
	}
	return out
}

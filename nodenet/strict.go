package nodenet

import (
	"errors"
	"net/netip"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Strict node encryption (Encrypt.Strict; ConfigMap node-encryption-strict): with
// node-encryption wireguard, pod-to-pod traffic between nodes is never sent in the clear.
// A peer without a key keeps its plain route (so it switches to WireGuard the moment it
// publishes one), but a filter chain drops what the node's own pods send to another
// node's pod block out of any interface but WGDevice: while the peer has no key, while
// this node's device is not up (or gone), whatever the routes say. The node's pods'
// traffic to the remote clusters' pod CIDRs (Options.KeepSourceTo) is dropped too when it
// would leave by an interface that is neither WGDevice (a non-gateway node's leg to the
// gateway) nor an inter-cluster tunnel device (StrictTunnelDevices: the gateway's
// `wg-<cluster>` and per-path `wg<k>-<cluster>`), so the plain route a non-gateway node
// keeps while the gateway's peer does not carry them drops instead of sending in the
// clear. Other addresses (outside the pod space and the remote CIDRs) are not touched,
// nor is the host's own traffic (it is not forwarded).
const (
	// DefaultStrictChain is the chain of its own in the masquerade's table (type filter,
	// hook forward, priority filter) holding the strict drops.
	DefaultStrictChain = "nodenet-strict"
	// MetricStrictDropped counts the packets strict mode dropped.
	MetricStrictDropped = "patronus_nodenet_strict_dropped_packets_total"
	// StrictDropped is the per-peer status of a peer whose pod traffic strict mode drops
	// because it published no key (other reasons: "dropped: <reason> (strict)").
	StrictDropped = "dropped: peer has no key (strict)"
	// StrictTunnelDevices is the interface-name wildcard (nft's trailing `*`: a prefix
	// match) of the inter-cluster tunnel devices, `wg-<cluster>` and `wg<k>-<cluster>`
	// (docs/CONTRACT.md), by which traffic to the remote clusters may leave besides
	// WGDevice. Any interface whose name begins with "wg" matches.
	StrictTunnelDevices = "wg*"
)

// Strict is the strict-mode drop chain as StrictDatapath.SetStrict makes it.
type Strict struct {
	// Sources are this node's pod blocks; empty removes the chain (strict off).
	Sources []netip.Prefix
	// Guarded are the other nodes' pod space (StrictDestinations).
	Guarded []netip.Prefix
	// Remote are the remote clusters' pod CIDRs (StrictRemote): traffic to them may leave
	// by Device or by an interface matching TunnelDevices, by no other.
	Remote []netip.Prefix
	// Device is the one interface guarded traffic may leave by (WGDevice).
	Device string
	// TunnelDevices is the interface-name wildcard Remote traffic may also leave by
	// (default StrictTunnelDevices; a trailing * matches any rest).
	TunnelDevices string
	Table         string // nftables inet table (default DefaultMasqTable, shared with the masquerade)
	Chain         string // its own chain (default DefaultStrictChain)
}

// StrictDatapath is a Datapath that can enforce strict mode. It is a separate interface
// so the datapaths that never run with strict mode (test substitutes, the agent's
// routes-off wrapper) need not implement it; a controller with strict on and a datapath
// without it reports an error every reconcile (it cannot keep its promise) but routes on.
type StrictDatapath interface {
	// SetStrict makes chain s.Chain (type filter, hook forward, priority filter) in table
	// inet s.Table hold one rule per source and guarded prefix, and one per source and
	// remote prefix:
	//
	//	ip saddr <source> ip daddr <guarded> oifname != <device> counter drop
	//	ip saddr <source> ip daddr <remote> oifname != <device> oifname != <tunnel devices> counter drop
	//
	// and returns the packets the chain has dropped since it was (re)made. It may be
	// called any number of times with the same s: only a different s rewrites the chain
	// (its counters then start from 0). Empty Sources removes the chain.
	SetStrict(s Strict) (dropped uint64, err error)
}

// StrictDestinations is what strict mode guards: the cluster's pod space (the cluster
// CIDRs, plus any peer block outside them) minus the node's own block and minus the
// remote clusters' CIDRs (their traffic goes through the tunnel dataplane, not ptw0).
// IPv4 only; the result is sorted and holds no prefix inside another.
func StrictDestinations(cluster []netip.Prefix, own netip.Prefix, remote []netip.Prefix) []netip.Prefix {
	return ipv4Minus(cluster, append(slices.Clone(remote), own))
}

// StrictRemote is the remote clusters' pod CIDRs strict mode keeps out of the clear: the
// IPv4 ones (as StrictDestinations, IPv6 is not guarded) minus the node's own block
// (its pods' traffic to it is local), sorted, no prefix inside another.
func StrictRemote(remote []netip.Prefix, own netip.Prefix) []netip.Prefix {
	return ipv4Minus(remote, []netip.Prefix{own})
}

// ipv4Minus is the IPv4 prefixes of ps (masked) without the addresses of cut's IPv4
// prefixes (invalid ones are skipped), sorted, no prefix inside another.
func ipv4Minus(ps, cut []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p = p.Masked(); p.IsValid() && p.Addr().Is4() {
			out = append(out, p)
		}
	}
	out = dedupe(out)
	for _, x := range cut {
		if x = x.Masked(); !x.IsValid() || !x.Addr().Is4() {
			continue
		}
		var next []netip.Prefix
		for _, p := range out {
			next = append(next, subtract(p, x)...)
		}
		out = next
	}
	return dedupe(out)
}

// subtract returns p without x as the fewest prefixes: p itself when they do not
// overlap, nothing when x covers p, else p's two halves, each without x.
func subtract(p, x netip.Prefix) []netip.Prefix {
	switch {
	case !p.Overlaps(x):
		return []netip.Prefix{p}
	case x.Bits() <= p.Bits():
		return nil // x contains p
	}
	lo, _ := p.Addr().Prefix(p.Bits() + 1)
	b := lo.Addr().As4()
	bit := p.Bits() // the bit that tells the halves apart
	b[bit/8] |= 0x80 >> (bit % 8)
	hi := netip.PrefixFrom(netip.AddrFrom4(b), p.Bits()+1)
	return append(subtract(lo, x), subtract(hi, x)...)
}

// dedupe sorts ps and drops every prefix another one contains.
func dedupe(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var out []netip.Prefix
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].Bits() <= p.Bits() && out[n-1].Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// strictOn: strict mode is asked for (check made sure encryption is on with it).
func (c *Controller) strictOn() bool {
	return c.o.Encrypt.Strict && c.o.Encrypt.Mode == EncryptionWireGuard
}

// setStrict programs (or, strict off, removes) the drop chain for this node's block and
// records the drops. Called before routes and the WireGuard device change, so a
// guarded packet never has a window to leave in the clear once the block is known.
func (c *Controller) setStrict(dp Datapath, block netip.Prefix, cluster []netip.Prefix) error {
	c.mu.Lock()
	c.status.Strict = c.strictOn()
	c.mu.Unlock()
	sd, ok := dp.(StrictDatapath)
	if !ok {
		if c.strictOn() {
			return errors.New("nodenet: strict node encryption is on but this datapath cannot drop traffic: pod traffic to peers without a key is NOT blocked")
		}
		return nil
	}
	s := Strict{Device: WGDevice, TunnelDevices: StrictTunnelDevices, Table: c.o.MasqTable, Chain: DefaultStrictChain}
	if c.strictOn() && block.IsValid() {
		s.Sources = []netip.Prefix{block}
		s.Guarded = StrictDestinations(cluster, block, c.o.KeepSourceTo)
		s.Remote = StrictRemote(c.o.KeepSourceTo, block)
	}
	n, err := sd.SetStrict(s)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// The chain's counters restart when it is rewritten: keep the total monotonic.
	if n < c.strictLast {
		c.strictBase += c.strictLast
	}
	c.strictLast = n
	c.status.StrictDropped = c.strictBase + n
	return nil
}

// strictCluster is the cluster's pod space as strict mode sees it: the cluster CIDR and
// every peer block (those inside it merge away).
func strictCluster(clusterCIDR netip.Prefix, peers []Peer) []netip.Prefix {
	var out []netip.Prefix
	if clusterCIDR.IsValid() {
		out = append(out, clusterCIDR)
	}
	for _, p := range peers {
		out = append(out, p.Blocks...)
	}
	return out
}

// strictReason is the per-peer status text of a peer strict mode drops.
func strictReason(plain string) string {
	if plain == PlainNoKey || plain == "" {
		return StrictDropped
	}
	return "dropped: " + strings.TrimSuffix(plain, ".") + " (strict)"
}

// StrictDroppedCounter is MetricStrictDropped read from status (a Controller's Status)
// at each scrape: the drops as of the last reconcile (every Resync).
func StrictDroppedCounter(status func() Status) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: MetricStrictDropped,
		Help: "Packets from this node's pods to another node's pod block or a remote cluster's pod CIDR dropped by strict node encryption because they would have left unencrypted."},
		func() float64 { return float64(status().StrictDropped) })
}

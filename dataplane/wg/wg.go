// Package wg manages the WireGuard device of a gateway node: the kernel implementation
// (netlink + wgctrl) where the kernel has a wireguard module, otherwise the userspace
// implementation (golang.zx2c4.com/wireguard) embedded in the agent, behind one Device
// interface. Configure takes the whole desired peer set, reads the device's current
// configuration and applies only the difference: an apply can interrupt traffic (a
// removed and re-added peer loses its session), so an unchanged desired state applies
// nothing, allowed IPs are replaced only for peers whose set changed, and peers no longer
// desired are removed one by one.
//
// The diff (Diff) is pure and shared by both implementations; they differ only in how
// they read the current state and send the resulting wgtypes.Config.
package wg

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// InterfacePrefix starts every WireGuard interface name Patronus creates
// (docs/CONTRACT.md).
const InterfacePrefix = "wg-"

// DefaultPort is the WireGuard listen port (docs/CONTRACT.md).
const DefaultPort = 51820

// Overhead is what WireGuard adds to a packet in the worst case (IPv6 outer header 40 +
// UDP 8 + WireGuard 32): the tunnel MTU is the underlay MTU minus this.
const Overhead = 80

// InterfaceName is the WireGuard interface of a cluster: "wg-" + the cluster id when it
// has at most 12 characters that are valid in an interface name, otherwise "wg-" + 12 hex
// characters of its SHA-256 (Linux limits names to 15 characters).
func InterfaceName(clusterID string) string {
	ok := clusterID != "" && len(clusterID) <= 12
	for _, r := range clusterID {
		if r <= ' ' || r >= 0x7f || r == '/' || r == ':' || r == '%' {
			ok = false
		}
	}
	if ok {
		return InterfacePrefix + clusterID
	}
	h := sha256.Sum256([]byte(clusterID))
	return InterfacePrefix + hex.EncodeToString(h[:6])
}

// Spec is the device itself: what Ensure creates or updates.
type Spec struct {
	Name       string
	ListenPort int
	PrivateKey wgtypes.Key
	// MTU of the tunnel interface; 0 means DefaultMTU.
	MTU int
}

// DefaultMTU is used when neither Spec.MTU nor an underlay MTU is known (1500 − 80).
const DefaultMTU = 1500 - Overhead

// Peer is one desired peer: a remote cluster's gateway.
type Peer struct {
	PublicKey  wgtypes.Key
	Endpoint   netip.AddrPort // zero: none (the peer must contact us first)
	AllowedIPs []netip.Prefix
	Keepalive  time.Duration // 0: off
}

// Changes is what a Configure applied; all empty means nothing was sent to the device.
// Held lists peers whose persistent keepalive is being held (see KeepaliveHold): the
// caller should configure again shortly (within KeepaliveHold) to turn it on.
type Changes struct {
	Added, Updated, Removed []wgtypes.Key
	Held                    []wgtypes.Key
}

// Empty reports whether nothing was applied.
func (c Changes) Empty() bool { return len(c.Added)+len(c.Updated)+len(c.Removed) == 0 }

// Device is one WireGuard interface.
//
// Ensure may be called repeatedly: it creates the interface (inside the device's network
// namespace) when missing and otherwise changes only the private key, listen port or MTU
// that differ. Configure may be called repeatedly with identical peers: the second call
// applies nothing. Close releases the device: a userspace interface disappears with it
// (it lives in this process), a kernel link stays with its peers so an agent restart
// does not cut the tunnel.
type Device interface {
	Ensure(Spec) error
	Configure(peers []Peer) (Changes, error)
	// State is the device as it is now (peers with handshake times and byte counters).
	State() (*wgtypes.Device, error)
	// Applies counts the configuration changes sent to the device (Ensure and Configure).
	Applies() uint64
	Name() string
	Close() error
}

// ErrNoKernelModule means the kernel cannot create wireguard links.
var ErrNoKernelModule = errors.New("wg: the kernel has no wireguard module")

// Diff computes the configuration that turns cur's peers into desired. ok is false
// when nothing needs to change.
func Diff(cur *wgtypes.Device, desired []Peer) (cfg wgtypes.Config, ch Changes, ok bool, err error) {
	have := map[wgtypes.Key]wgtypes.Peer{}
	if cur != nil {
		for _, p := range cur.Peers {
			have[p.PublicKey] = p
		}
	}
	seen := map[wgtypes.Key]bool{}
	// Deterministic order: sorted by key.
	want := slices.Clone(desired)
	slices.SortFunc(want, func(a, b Peer) int { return strings.Compare(a.PublicKey.String(), b.PublicKey.String()) })
	for _, d := range want {
		if seen[d.PublicKey] {
			return cfg, ch, false, fmt.Errorf("wg: peer %s desired twice", d.PublicKey)
		}
		seen[d.PublicKey] = true
		wantIPs := normPrefixes(d.AllowedIPs)
		pc := wgtypes.PeerConfig{PublicKey: d.PublicKey}
		h, exists := have[d.PublicKey]
		changed := !exists
		if !exists || !endpointEqual(h.Endpoint, d.Endpoint) {
			if d.Endpoint.IsValid() {
				pc.Endpoint = net.UDPAddrFromAddrPort(d.Endpoint)
				changed = true
			}
		}
		if !exists || !slices.Equal(normNets(h.AllowedIPs), wantIPs) {
			pc.ReplaceAllowedIPs = true
			for _, p := range wantIPs {
				pc.AllowedIPs = append(pc.AllowedIPs, prefixNet(p))
			}
			changed = true
		}
		if !exists || h.PersistentKeepaliveInterval != d.Keepalive {
			ka := d.Keepalive
			pc.PersistentKeepaliveInterval = &ka
			changed = changed || exists && h.PersistentKeepaliveInterval != d.Keepalive
		}
		if !changed {
			continue
		}
		if exists {
			pc.UpdateOnly = true
			ch.Updated = append(ch.Updated, d.PublicKey)
		} else {
			ch.Added = append(ch.Added, d.PublicKey)
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	var gone []wgtypes.Key
	for k := range have {
		if !seen[k] {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, func(a, b wgtypes.Key) int { return strings.Compare(a.String(), b.String()) })
	for _, k := range gone {
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		ch.Removed = append(ch.Removed, k)
	}
	return cfg, ch, !ch.Empty(), nil
}

// KeepaliveHold is how long the passive side of a new peer holds its persistent
// keepalive (keepaliveHold).
const KeepaliveHold = 2 * time.Second

// keepaliveHold decides which new peers' persistent keepalive waits. Turning a peer's
// keepalive on makes WireGuard send at once, and without a session that send is a
// handshake initiation. Two gateways that learn of each other from the same gossip round
// both turn it on within a millisecond: the initiations cross, each side answers the
// other's, which replaces its own pending handshake (wireguard-go keeps one per peer),
// and drops the answer to its own; both end up holding only an unconfirmed responder
// session and neither sends until WireGuard's 5 s retry (measured here: first ping after
// more than 4 s in about one of three simultaneous adds). So only the side with the
// smaller public key (the active side) turns keepalive on at once; the other holds it
// until a handshake with that peer completed or KeepaliveHold passed (the active side's
// initiation may have been dropped because this node had not added it yet; then this
// side starts one itself, well before the 5 s retry). While held, the peer also gets no
// allowed IPs: pod traffic already waiting for the tunnel would otherwise start this
// side's initiation just the same (it is dropped instead, until the handshake or for at most KeepaliveHold, and
// retransmitted). A peer that replaces a removed one
// with the same allowed IPs is a rotated key: the other side already has this node, so
// only this side adds, and it is never held.
type keepaliveHold struct {
	mu    sync.Mutex
	since map[wgtypes.Key]time.Time // first time each held peer was held
}

// apply returns desired with the keepalive and allowed IPs of held peers cleared, and
// those peers.
func (h *keepaliveHold) apply(cur *wgtypes.Device, desired []Peer, now time.Time) ([]Peer, []wgtypes.Key) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.since == nil {
		h.since = map[wgtypes.Key]time.Time{}
	}
	have := map[wgtypes.Key]wgtypes.Peer{}
	var local wgtypes.Key
	if cur != nil {
		local = cur.PublicKey
		for _, p := range cur.Peers {
			have[p.PublicKey] = p
		}
	}
	wanted := map[wgtypes.Key]bool{}
	for _, d := range desired {
		wanted[d.PublicKey] = true
	}
	out := slices.Clone(desired)
	var held []wgtypes.Key
	for i := range out {
		d := &out[i]
		k := d.PublicKey
		p, exists := have[k]
		switch {
		case d.Keepalive <= 0, local == (wgtypes.Key{}),
			exists && (p.PersistentKeepaliveInterval > 0 || !p.LastHandshakeTime.IsZero()),
			bytes.Compare(local[:], k[:]) < 0,
			!exists && replacesRemoved(have, wanted, d.AllowedIPs):
			delete(h.since, k)
			continue
		}
		first, ok := h.since[k]
		if !ok {
			first = now
			h.since[k] = now
		}
		if now.Sub(first) >= KeepaliveHold {
			delete(h.since, k)
			continue
		}
		d.Keepalive, d.AllowedIPs = 0, nil
		held = append(held, k)
	}
	for k := range h.since {
		if !wanted[k] {
			delete(h.since, k)
		}
	}
	return out, held
}

// replacesRemoved reports whether a current peer that is no longer wanted has exactly
// the allowed IPs ips.
func replacesRemoved(have map[wgtypes.Key]wgtypes.Peer, wanted map[wgtypes.Key]bool, ips []netip.Prefix) bool {
	want := normPrefixes(ips)
	for k, p := range have {
		if !wanted[k] && slices.Equal(normNets(p.AllowedIPs), want) {
			return true
		}
	}
	return false
}

func endpointEqual(have *net.UDPAddr, want netip.AddrPort) bool {
	if have == nil {
		return !want.IsValid()
	}
	ap := have.AddrPort()
	return ap.Addr().Unmap() == want.Addr().Unmap() && ap.Port() == want.Port()
}

func normPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked())
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func normNets(ns []net.IPNet) []netip.Prefix {
	ps := make([]netip.Prefix, 0, len(ns))
	for _, n := range ns {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		bits, _ := n.Mask.Size()
		if a.Is4In6() && bits > 32 {
			bits -= 96
		}
		ps = append(ps, netip.PrefixFrom(a.Unmap(), bits))
	}
	return normPrefixes(ps)
}

func prefixNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

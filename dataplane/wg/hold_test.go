package wg

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestKeepaliveHold(t *testing.T) {
	var low, high wgtypes.Key // low < high byte-wise
	low[0], high[0] = 1, 2
	var mid wgtypes.Key
	mid[0] = 3
	ips := []netip.Prefix{netip.MustParsePrefix("10.248.0.0/16")}
	ipnet := []net.IPNet{{IP: net.IP{10, 248, 0, 0}.To4(), Mask: net.CIDRMask(16, 32)}}
	const ka = 25 * time.Second
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name     string
		local    wgtypes.Key
		cur      []wgtypes.Peer
		desired  Peer
		at       time.Duration // since the first call
		wantHeld bool
	}{
		{name: "smaller local key: active, not held", local: low, desired: Peer{PublicKey: high, AllowedIPs: ips, Keepalive: ka}},
		{name: "larger local key: new peer held", local: high, desired: Peer{PublicKey: low, AllowedIPs: ips, Keepalive: ka}, wantHeld: true},
		{name: "held until the hold passed", local: high, desired: Peer{PublicKey: low, AllowedIPs: ips, Keepalive: ka}, at: KeepaliveHold},
		{name: "held peer released by a handshake", local: high, cur: []wgtypes.Peer{{PublicKey: low, LastHandshakeTime: t0}},
			desired: Peer{PublicKey: low, AllowedIPs: ips, Keepalive: ka}},
		{name: "keepalive already on", local: high, cur: []wgtypes.Peer{{PublicKey: low, PersistentKeepaliveInterval: ka}},
			desired: Peer{PublicKey: low, AllowedIPs: ips, Keepalive: ka}},
		{name: "keepalive off: nothing to hold", local: high, desired: Peer{PublicKey: low, AllowedIPs: ips}},
		{name: "rotated key replaces a removed peer with the same allowed IPs", local: mid,
			cur: []wgtypes.Peer{{PublicKey: high, AllowedIPs: ipnet}}, desired: Peer{PublicKey: low, AllowedIPs: ips, Keepalive: ka}},
		{name: "unknown local key", desired: Peer{PublicKey: low, AllowedIPs: ips, Keepalive: ka}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h keepaliveHold
			cur := &wgtypes.Device{PublicKey: tc.local, Peers: tc.cur}
			// The first call starts the hold clock; the second is at tc.at.
			h.apply(cur, []Peer{tc.desired}, t0)
			out, held := h.apply(cur, []Peer{tc.desired}, t0.Add(tc.at))
			if got := len(held) == 1; got != tc.wantHeld {
				t.Fatalf("held %v, want %v", held, tc.wantHeld)
			}
			if tc.wantHeld {
				if out[0].Keepalive != 0 || out[0].AllowedIPs != nil {
					t.Fatalf("held peer configured with keepalive %v, allowed IPs %v", out[0].Keepalive, out[0].AllowedIPs)
				}
			} else if out[0].Keepalive != tc.desired.Keepalive || len(out[0].AllowedIPs) != len(tc.desired.AllowedIPs) {
				t.Fatalf("peer changed: %+v", out[0])
			}
			// Peers no longer desired are forgotten.
			h.apply(cur, nil, t0)
			if len(h.since) != 0 {
				t.Fatalf("hold state kept for removed peers: %v", h.since)
			}
		})
	}
}

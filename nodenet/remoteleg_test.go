package nodenet

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func ipnets(ps ...string) []net.IPNet {
	var out []net.IPNet
	for _, p := range ps {
		_, n, err := net.ParseCIDR(p)
		if err != nil {
			panic(err)
		}
		out = append(out, *n)
	}
	return out
}

func TestDecideRemoteLeg(t *testing.T) {
	gwKey, otherKey := key(t).PublicKey(), key(t).PublicKey()
	remote := []netip.Prefix{pfx("10.248.0.0/16"), pfx("10.250.0.0/16")}
	up := Status{Encryption: EncryptionWireGuard, WireGuard: &WGStatus{Device: WGDevice, PublicKey: key(t).PublicKey().String()}}
	devErr := up
	devErr.WireGuard = &WGStatus{Device: WGDevice, PublicKey: up.WireGuard.PublicKey, Error: "create TUN: permission denied"}
	noDev := up
	noDev.WireGuard = nil
	dupKey := up
	dupKey.PeerStates = []PeerState{{Node: "gw", Reason: PlainDupKey}, {Node: "other", Encrypted: true}}
	off := Status{Encryption: EncryptionNone}
	// The gateway rotated: nodenet swapped its peer (new key, same block), the caller
	// still has the old key from the annotation it read earlier.
	rotated := up
	rotated.PeerStates = []PeerState{{Node: "gw", Encrypted: true, Blocks: []netip.Prefix{pfx("10.244.1.0/24")}}}
	newGW := key(t).PublicKey()
	dev := func(peers ...wgtypes.Peer) *wgtypes.Device { return &wgtypes.Device{Name: WGDevice, Peers: peers} }
	gwPeer := func(allowed ...string) wgtypes.Peer {
		return wgtypes.Peer{PublicKey: gwKey, AllowedIPs: ipnets(allowed...)}
	}
	// A v4-mapped allowed IP, as some WireGuard implementations report them.
	mapped := wgtypes.Peer{PublicKey: gwKey, AllowedIPs: []net.IPNet{{IP: net.ParseIP("10.248.0.0").To16(), Mask: net.CIDRMask(112, 128)}}}
	for _, tc := range []struct {
		name          string
		st            Status
		dev           *wgtypes.Device
		gwKey         wgtypes.Key
		remote        []netip.Prefix
		enc, plain    []string
		reasonHas     string
		wantNoMessage bool
	}{
		{name: "encryption off: plain, nothing to say", st: off, dev: dev(gwPeer("10.244.1.0/24", "10.248.0.0/16", "10.250.0.0/16")), gwKey: gwKey, remote: remote, wantNoMessage: true},
		{name: "no remote cidr", st: up, dev: dev(), gwKey: gwKey, wantNoMessage: true},
		{name: "gateway peer carries every cidr", st: up, dev: dev(wgtypes.Peer{PublicKey: otherKey, AllowedIPs: ipnets("10.244.2.0/24")},
			gwPeer("10.244.1.0/24", "10.248.0.0/16", "10.250.0.0/16")), gwKey: gwKey, remote: remote,
			enc: []string{"10.248.0.0/16", "10.250.0.0/16"}, wantNoMessage: true},
		{name: "a wider allowed range covers", st: up, dev: dev(gwPeer("10.244.1.0/24", "10.248.0.0/15")), gwKey: gwKey, remote: remote,
			enc: []string{"10.248.0.0/16"}, plain: []string{"10.250.0.0/16"}, reasonHas: LegNotAllowed},
		{name: "a narrower allowed range does not", st: up, dev: dev(gwPeer("10.244.1.0/24", "10.248.0.0/17", "10.250.0.0/16")), gwKey: gwKey, remote: remote,
			enc: []string{"10.250.0.0/16"}, plain: []string{"10.248.0.0/16"}, reasonHas: LegNotAllowed},
		{name: "v4-mapped allowed ip", st: up, dev: dev(mapped), gwKey: gwKey, remote: remote[:1], enc: []string{"10.248.0.0/16"}, wantNoMessage: true},
		{name: "remote cidrs on another peer (another entry gateway)", st: up, dev: dev(gwPeer("10.244.1.0/24"),
			wgtypes.Peer{PublicKey: otherKey, AllowedIPs: ipnets("10.244.2.0/24", "10.248.0.0/16", "10.250.0.0/16")}), gwKey: gwKey, remote: remote,
			plain: []string{"10.248.0.0/16", "10.250.0.0/16"}, reasonHas: LegNotAllowed},
		{name: "gateway published no key", st: up, dev: dev(gwPeer("10.248.0.0/16")), remote: remote,
			plain: []string{"10.248.0.0/16", "10.250.0.0/16"}, reasonHas: LegNoGatewayKey},
		{name: "gateway key not a peer", st: up, dev: dev(wgtypes.Peer{PublicKey: otherKey}), gwKey: gwKey, remote: remote,
			plain: []string{"10.248.0.0/16", "10.250.0.0/16"}, reasonHas: LegNotPeer},
		{name: "gateway rotated: its peer found by its block", st: rotated, dev: dev(wgtypes.Peer{PublicKey: otherKey, AllowedIPs: ipnets("10.244.2.0/24")},
			wgtypes.Peer{PublicKey: newGW, AllowedIPs: ipnets("10.244.1.0/24", "10.248.0.0/16", "10.250.0.0/16")}), gwKey: gwKey, remote: remote,
			enc: []string{"10.248.0.0/16", "10.250.0.0/16"}, wantNoMessage: true},
		{name: "gateway rotated, its block on no peer", st: rotated, dev: dev(wgtypes.Peer{PublicKey: otherKey, AllowedIPs: ipnets("10.244.2.0/24", "10.248.0.0/16")}),
			gwKey: gwKey, remote: remote, plain: []string{"10.248.0.0/16", "10.250.0.0/16"}, reasonHas: LegNotPeer},
		{name: "not a peer, with nodenet's reason", st: dupKey, dev: dev(), gwKey: gwKey, remote: remote,
			plain: []string{"10.248.0.0/16", "10.250.0.0/16"}, reasonHas: PlainDupKey},
		{name: "no device in the status", st: noDev, dev: dev(gwPeer("10.248.0.0/16", "10.250.0.0/16")), gwKey: gwKey, remote: remote,
			plain: []string{"10.248.0.0/16", "10.250.0.0/16"}, reasonHas: LegNoDevice},
		{name: "device not readable", st: up, gwKey: gwKey, remote: remote, plain: []string{"10.248.0.0/16", "10.250.0.0/16"}, reasonHas: LegNoDevice},
		{name: "device error", st: devErr, dev: dev(gwPeer("10.248.0.0/16", "10.250.0.0/16")), gwKey: gwKey, remote: remote,
			plain: []string{"10.248.0.0/16", "10.250.0.0/16"}, reasonHas: "permission denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leg := DecideRemoteLeg(tc.st, tc.dev, "gw", tc.gwKey, tc.remote)
			strs := func(ps []netip.Prefix) []string {
				var out []string
				for _, p := range ps {
					out = append(out, p.String())
				}
				return out
			}
			if got := strs(leg.Encrypted); !slices.Equal(got, tc.enc) {
				t.Errorf("encrypted %v, want %v", got, tc.enc)
			}
			if got := strs(leg.Plain); !slices.Equal(got, tc.plain) {
				t.Errorf("plain %v, want %v", got, tc.plain)
			}
			msg := leg.String()
			if tc.wantNoMessage != (msg == "") || !strings.Contains(leg.Reason, tc.reasonHas) || (msg != "" && !strings.Contains(msg, leg.Reason)) {
				t.Errorf("reason %q, message %q; want reason containing %q (no message: %v)", leg.Reason, msg, tc.reasonHas, tc.wantNoMessage)
			}
		})
	}
}

// Under strict mode the plain CIDRs' traffic is dropped, and the leg says so instead of
// "in the clear" (the status line and the agent's log use String).
func TestRemoteLegStrict(t *testing.T) {
	gwKey := key(t).PublicKey()
	remote := []netip.Prefix{pfx("10.248.0.0/16")}
	up := Status{Encryption: EncryptionWireGuard, WireGuard: &WGStatus{Device: WGDevice, PublicKey: key(t).PublicKey().String()}}
	strict := up
	strict.Strict = true
	noDev := strict
	noDev.WireGuard = nil
	carries := &wgtypes.Device{Name: WGDevice, Peers: []wgtypes.Peer{{PublicKey: gwKey, AllowedIPs: ipnets("10.244.1.0/24", "10.248.0.0/16")}}}
	for _, tc := range []struct {
		name  string
		st    Status
		gwKey wgtypes.Key
		want  string
	}{
		{name: "strict, gateway without a key", st: strict, want: "10.248.0.0/16 DROPPED by strict node encryption (not sent in the clear): " + LegNoGatewayKey},
		{name: "strict, no device", st: noDev, gwKey: gwKey, want: "10.248.0.0/16 DROPPED by strict node encryption (not sent in the clear): " + LegNoDevice},
		{name: "strict, the gateway's peer carries it", st: strict, gwKey: gwKey, want: ""},
		{name: "not strict, gateway without a key", st: up, want: "10.248.0.0/16 in the clear: " + LegNoGatewayKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leg := DecideRemoteLeg(tc.st, carries, "gw", tc.gwKey, remote)
			if got := leg.String(); got != tc.want {
				t.Errorf("leg %q, want %q", got, tc.want)
			}
			if leg.Strict != tc.st.Strict {
				t.Errorf("leg strict %v, want %v", leg.Strict, tc.st.Strict)
			}
		})
	}
}

package wg

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func key(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func TestInterfaceName(t *testing.T) {
	for _, tc := range []struct{ id, want string }{
		{"cluster-a", "wg-cluster-a"},
		{"exactly12chr", "wg-exactly12chr"},
		{"", ""},
		{"thirteen-char", ""},
		{"a/b", ""},
	} {
		got := InterfaceName(tc.id)
		if len(got) > 15 || !strings.HasPrefix(got, "wg-") {
			t.Errorf("%q: %q is not a valid name", tc.id, got)
		}
		if tc.want != "" && got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.id, got, tc.want)
		}
		if tc.want == "" && len(got) != 15 {
			t.Errorf("%q: got %q, want a 12-character hash", tc.id, got)
		}
	}
	if InterfaceName("thirteen-char") == InterfaceName("thirteen-chas") {
		t.Error("hashes collide")
	}
}

func TestDiff(t *testing.T) {
	k1, k2, k3 := key(t), key(t), key(t)
	ep := netip.MustParseAddrPort("192.0.2.1:51820")
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	nets := func(s ...string) []net.IPNet {
		var out []net.IPNet
		for _, p := range pfx(s...) {
			out = append(out, prefixNet(p))
		}
		return out
	}
	cur := &wgtypes.Device{Peers: []wgtypes.Peer{
		{PublicKey: k1, Endpoint: net.UDPAddrFromAddrPort(ep), AllowedIPs: nets("10.248.0.0/16"), PersistentKeepaliveInterval: 25 * time.Second},
		{PublicKey: k2, Endpoint: net.UDPAddrFromAddrPort(ep), AllowedIPs: nets("10.249.0.0/16")},
	}}
	same := []Peer{
		{PublicKey: k1, Endpoint: ep, AllowedIPs: pfx("10.248.0.0/16"), Keepalive: 25 * time.Second},
		{PublicKey: k2, Endpoint: ep, AllowedIPs: pfx("10.249.0.0/16")},
	}
	for _, tc := range []struct {
		name                    string
		desired                 []Peer
		added, updated, removed int
		replaceIPs              int // peers whose allowed IPs are replaced
	}{
		{"unchanged", same, 0, 0, 0, 0},
		{"unchanged, other order and unmasked", []Peer{same[1], {PublicKey: k1, Endpoint: ep, AllowedIPs: pfx("10.248.1.0/16", "10.248.0.0/16"), Keepalive: 25 * time.Second}}, 0, 0, 0, 0},
		{"one peer's allowed IPs", []Peer{same[0], {PublicKey: k2, Endpoint: ep, AllowedIPs: pfx("10.249.0.0/16", "10.250.0.0/16")}}, 0, 1, 0, 1},
		{"endpoint moved", []Peer{same[0], {PublicKey: k2, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: pfx("10.249.0.0/16")}}, 0, 1, 0, 0},
		{"keepalive", []Peer{same[0], {PublicKey: k2, Endpoint: ep, AllowedIPs: pfx("10.249.0.0/16"), Keepalive: time.Second}}, 0, 1, 0, 0},
		{"peer added", append(same, Peer{PublicKey: k3, Endpoint: ep, AllowedIPs: pfx("10.251.0.0/16")}), 1, 0, 0, 1},
		{"peer removed", same[:1], 0, 0, 1, 0},
		{"all removed", nil, 0, 0, 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, ch, ok, err := Diff(cur, tc.desired)
			if err != nil {
				t.Fatal(err)
			}
			if len(ch.Added) != tc.added || len(ch.Updated) != tc.updated || len(ch.Removed) != tc.removed {
				t.Fatalf("changes %+v, want %d added %d updated %d removed", ch, tc.added, tc.updated, tc.removed)
			}
			if ok != !ch.Empty() || (len(cfg.Peers) == 0) == ok {
				t.Fatalf("ok=%v with %d peer configs", ok, len(cfg.Peers))
			}
			replaced := 0
			for _, p := range cfg.Peers {
				if p.ReplaceAllowedIPs {
					replaced++
				}
				if p.Remove && p.ReplaceAllowedIPs {
					t.Fatal("a removed peer gets no allowed IPs")
				}
			}
			if replaced != tc.replaceIPs {
				t.Fatalf("%d peers' allowed IPs replaced, want %d", replaced, tc.replaceIPs)
			}
		})
	}
	if _, _, _, err := Diff(cur, []Peer{same[0], same[0]}); err == nil {
		t.Fatal("a duplicate peer must be an error")
	}
}

func TestUAPIRoundTrip(t *testing.T) {
	priv, _ := wgtypes.GeneratePrivateKey()
	k1 := key(t)
	ka := 25 * time.Second
	port := 51820
	cfg := wgtypes.Config{PrivateKey: &priv, ListenPort: &port, Peers: []wgtypes.PeerConfig{{
		PublicKey: k1, Endpoint: &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 51820},
		PersistentKeepaliveInterval: &ka, ReplaceAllowedIPs: true,
		AllowedIPs: []net.IPNet{prefixNet(netip.MustParsePrefix("10.248.0.0/16"))},
	}}}
	text := encodeConfig(cfg)
	for _, want := range []string{"listen_port=51820\n", "endpoint=192.0.2.1:51820\n", "replace_allowed_ips=true\nallowed_ip=10.248.0.0/16\n", "persistent_keepalive_interval=25\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("encoded config lacks %q:\n%s", want, text)
		}
	}
	// The device answers "get" in the same vocabulary plus counters.
	get := strings.Replace(text, "replace_allowed_ips=true\n", "", 1) + "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\n"
	d, err := decodeState("wg-x", get)
	if err != nil {
		t.Fatal(err)
	}
	if d.PrivateKey != priv || d.PublicKey != priv.PublicKey() || d.ListenPort != 51820 || len(d.Peers) != 1 {
		t.Fatalf("decoded %+v", d)
	}
	p := d.Peers[0]
	if p.PublicKey != k1 || p.Endpoint.String() != "192.0.2.1:51820" || p.PersistentKeepaliveInterval != ka ||
		len(p.AllowedIPs) != 1 || p.AllowedIPs[0].String() != "10.248.0.0/16" || p.ReceiveBytes != 20 || p.LastHandshakeTime.Unix() != 1700000000 {
		t.Fatalf("decoded peer %+v", p)
	}
	if _, _, ok, _ := Diff(d, []Peer{{PublicKey: k1, Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.248.0.0/16")}, Keepalive: ka}}); ok {
		t.Fatal("the decoded state equals the desired peer: nothing to apply")
	}
}

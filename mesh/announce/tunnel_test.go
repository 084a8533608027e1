package announce

import (
	"encoding/base64"
	"net/netip"
	"testing"
	"time"
)

func TestTunnelAnnouncement(t *testing.T) {
	f := newFixture(t)
	r := f.receiver(t, nil, nil)
	s := NewSigner(f.identity(t, "east", f.east, "gw1"), func() time.Time { return f.now })
	key := func(b byte) string {
		k := make([]byte, 32)
		k[0] = b
		return base64.StdEncoding.EncodeToString(k)
	}
	tun := func(pub string, prefix string) Announcement {
		return Announcement{Kind: KindTunnel, Prefixes: []netip.Prefix{netip.MustParsePrefix(prefix)},
			Tunnel: &Tunnel{PublicKey: pub, Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820")}}}
	}
	for _, tc := range []struct {
		name   string
		a      Announcement
		reason Reason // "" = accepted
	}{
		{"accepted", tun(key(1), "10.244.0.0/16"), ""},
		{"rotated key replaces the first", tun(key(2), "10.244.0.0/16"), ""},
		{"prefix outside the cluster's CIDRs", tun(key(3), "10.2.0.0/16"), ReasonUnauthorisedPrefix},
		{"bad key", tun("AAAA", "10.244.0.0/16"), ""},
		{"no prefixes", Announcement{Kind: KindTunnel, Tunnel: &Tunnel{PublicKey: key(4)}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wire, _, err := s.Sign(tc.a, time.Minute)
			if tc.name == "bad key" || tc.name == "no prefixes" {
				if err == nil {
					t.Fatal("signer accepted an invalid tunnel announcement")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			_, err = r.Receive(wire)
			if ReasonOf(err) != tc.reason {
				t.Fatalf("reason %q (%v), want %q", ReasonOf(err), err, tc.reason)
			}
		})
	}
	got := r.State().List()
	if len(got) != 1 || got[0].Tunnel == nil || got[0].Tunnel.PublicKey != key(2) {
		t.Fatalf("state after rotation: %+v", got)
	}
}

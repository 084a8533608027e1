package nodenet

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/patronus/patronus/nodenet/alloc"
)

type nopDP struct{}

func (nopDP) Apply(Local, Plan) error        { return nil }
func (nopDP) SetMasquerade(Masquerade) error { return nil }
func (nopDP) Close()                         {}
func (nopDP) LocalLink(netip.Addr) (string, netip.Prefix, error) {
	return "eth0", pfx("192.168.1.0/24"), nil
}

// The node re-publishes its claim with a backoff (1s, 2s, 4s, ...) after it claimed and
// after the alive members changed, for 30s, and beyond that only while some alive
// member shows no claim.
func TestEdgeRepublish(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	members := []EdgeMember{{Name: "n2", Addr: ip("192.168.1.2")}}
	var published []time.Duration
	start := now
	e, err := NewEdge(EdgeOptions{NodeName: "n1", NodeIP: ip("192.168.1.1"), ClusterCIDR: pfx("10.244.0.0/16"),
		ConfListPath: filepath.Join(t.TempDir(), "10-patronus.conflist"), Datapath: nopDP{}, Settle: -1,
		Members: func() []EdgeMember { return members },
		Publish: func(string) error { published = append(published, now.Sub(start)); return nil },
		Now:     func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	wire := ""
	until := func(d time.Duration) {
		for now.Sub(start) < d {
			now = now.Add(500 * time.Millisecond)
			if err := e.reconcile(context.Background(), nopDP{}, &wire); err != nil {
				t.Fatal(err)
			}
		}
	}
	s := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	check := func(want ...time.Duration) {
		t.Helper()
		if !slices.Equal(published, want) {
			t.Fatalf("published at %v, want %v", published, want)
		}
	}
	// n2 shows no claim: claim at 0.5s, then 1.5, 3.5, 7.5, 15.5, 31.5, 61.5 (capped at 30s).
	until(s(62))
	check(s(0.5), s(1.5), s(3.5), s(7.5), s(15.5), s(31.5), s(61.5))
	// n3 appears and every claim is known: at once, then 1s, 2s, 4s, 8s later, and no more
	// once 30s have passed.
	members = []EdgeMember{{Name: "n2", Addr: ip("192.168.1.2"), Claim: "10.244.200.0/24@1"}, {Name: "n3", Addr: ip("192.168.1.3"), Claim: "10.244.201.0/24@1"}}
	published = nil
	until(s(150))
	check(s(62.5), s(63.5), s(65.5), s(69.5), s(77.5))
}

// A node without a claim waits (up to Settle) to learn the claims already made: alone it
// claims when Settle has passed; with a member whose claim is not known yet it waits
// for it and then avoids that block; with every claim known it claims at once.
func TestEdgeSettle(t *testing.T) {
	held := func(n string) string { // the block n would take first: make the peer hold it
		return FormatClaim(alloc.Claim{Block: alloc.Candidates(pfx("10.244.0.0/16"), 24, n, nil, 1)[0], At: time.UnixMilli(1)})
	}
	for _, tc := range []struct {
		name      string
		members   func(since time.Duration) []EdgeMember
		claimAt   time.Duration
		avoidPeer bool
	}{
		{"alone", func(time.Duration) []EdgeMember { return nil }, 5500 * time.Millisecond, false}, // Settle from the first look at 0.5s
		{"peer's claim known", func(time.Duration) []EdgeMember {
			return []EdgeMember{{Name: "n2", Addr: ip("192.168.1.2"), Claim: held("n1")}}
		}, 500 * time.Millisecond, true},
		{"peer's claim arrives at 2s", func(d time.Duration) []EdgeMember {
			m := EdgeMember{Name: "n2", Addr: ip("192.168.1.2")}
			if d >= 2*time.Second {
				m.Claim = held("n1")
			}
			return []EdgeMember{m}
		}, 2 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Unix(1_800_000_000, 0)
			now := start
			var first time.Duration
			e, err := NewEdge(EdgeOptions{NodeName: "n1", NodeIP: ip("192.168.1.1"), ClusterCIDR: pfx("10.244.0.0/16"),
				ConfListPath: filepath.Join(t.TempDir(), "10-patronus.conflist"), Datapath: nopDP{},
				Members: func() []EdgeMember { return tc.members(now.Sub(start)) },
				Publish: func(string) error {
					if first == 0 {
						first = now.Sub(start)
					}
					return nil
				},
				Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			wire := ""
			for range 16 {
				now = now.Add(500 * time.Millisecond)
				if err := e.reconcile(context.Background(), nopDP{}, &wire); err != nil {
					t.Fatal(err)
				}
			}
			own, ok := e.claimer.Own()
			if !ok || first != tc.claimAt {
				t.Fatalf("claimed %v at %s, want at %s", own, first, tc.claimAt)
			}
			if peer, _ := ParseClaim("n2", held("n1")); tc.avoidPeer && own.Block == peer.Block {
				t.Fatalf("claimed the peer's block %s", own.Block)
			}
		})
	}
}

package nodenet

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

type nopDP struct{}

func (nopDP) Apply(Local, Plan) error        { return nil }
func (nopDP) SetMasquerade(Masquerade) error { return nil }
func (nopDP) Close()                         {}
func (nopDP) LocalLink(netip.Addr) (string, netip.Prefix, error) {
	return "eth0", pfx("192.168.1.0/24"), nil
}

// While an alive member shows no claim the node re-publishes its own with a backoff
// (1s, 2s, 4s, ...), restarting when that set of members changes, and stops once every
// member's claim is known.
func TestEdgeRepublish(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	members := []EdgeMember{{Name: "n2", Addr: ip("192.168.1.2")}}
	var published []time.Time
	e, err := NewEdge(EdgeOptions{NodeName: "n1", NodeIP: ip("192.168.1.1"), ClusterCIDR: pfx("10.244.0.0/16"),
		ConfListPath: filepath.Join(t.TempDir(), "10-patronus.conflist"), Datapath: nopDP{},
		Members: func() []EdgeMember { return members },
		Publish: func(string) error { published = append(published, now); return nil },
		Now:     func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	wire := ""
	step := func(d time.Duration) {
		now = now.Add(d)
		if err := e.reconcile(context.Background(), nopDP{}, &wire); err != nil {
			t.Fatal(err)
		}
	}
	start := now
	for range 16 { // 8 s in half-second steps
		step(500 * time.Millisecond)
	}
	// Claim at 0.5s, re-publish at 1s (the unknown member is first seen), 2s, 4s, 8s.
	var at []time.Duration
	for _, p := range published {
		at = append(at, p.Sub(start))
	}
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	if len(at) != len(want) {
		t.Fatalf("published at %v, want %v", at, want)
	}
	for i := range want {
		if at[i] != want[i] {
			t.Fatalf("published at %v, want %v", at, want)
		}
	}
	// A new unknown member restarts the backoff; known claims stop it.
	members = append(members, EdgeMember{Name: "n3", Addr: ip("192.168.1.3")})
	step(500 * time.Millisecond)
	if len(published) != 6 {
		t.Fatalf("no re-publish for a new member: %d", len(published))
	}
	members = []EdgeMember{{Name: "n2", Addr: ip("192.168.1.2"), Claim: "10.244.200.0/24@1"}, {Name: "n3", Addr: ip("192.168.1.3"), Claim: "10.244.201.0/24@1"}}
	for range 10 {
		step(5 * time.Second)
	}
	if len(published) != 6 {
		t.Fatalf("re-published %d times with every claim known", len(published)-6)
	}
}

package mesh

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/patronus/patronus/mesh/announce"
)

func TestSendQueueOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		push []string // "u:x" urgent, "r:x" refresh
		due  []string // refreshes close to expiry
		want []string
	}{
		{name: "urgent before refreshes", push: []string{"r:a", "r:b", "u:c"}, want: []string{"c", "a", "b"}},
		{name: "each slot once", push: []string{"r:a", "r:a", "u:b", "u:b"}, want: []string{"b", "a"}},
		{name: "urgent push moves a waiting refresh ahead", push: []string{"r:a", "r:b", "u:c", "u:b"}, want: []string{"c", "b", "a"}},
		{name: "a refresh about to expire goes first", push: []string{"r:a", "r:b", "u:c"}, due: []string{"a"}, want: []string{"a", "c", "b"}},
		{name: "a due refresh waits its turn among refreshes", push: []string{"r:a", "r:b", "u:c"}, due: []string{"b"}, want: []string{"c", "a", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q sendQueue
			for _, p := range tc.push {
				q.push(p[2:], p[0] == 'u')
			}
			var got []string
			for {
				s, ok := q.pop(func(s string) bool { return slices.Contains(tc.due, s) })
				if !ok {
					break
				}
				got = append(got, s)
			}
			if !slices.Equal(got, tc.want) || q.len() != 0 {
				t.Fatalf("popped %v (left %d), want %v", got, q.len(), tc.want)
			}
		})
	}
}

// A paced node holding more announcements than one Refresh carries at its rate sends
// them all, keeps every one alive at the receiver although a round outlasts the base TTL
// (their TTL is stretched by the same factor), and still refuses an invalid announcement
// at once while its queue is full.
func TestPacedAnnouncementsStayAlive(t *testing.T) {
	c := newTestCluster(t, "east", "10.0.0.0/8")
	base := loopbackBase()
	const claims, perSecond = 60, 10 // a 6 s round; Refresh 1 s and TTL 3 s (startNode)
	a := startNode(t, c, "a", base+"1", nil, func(o *Options) { o.AnnounceRate = perSecond })
	b := startNode(t, c, "b", base+"2", []string{base + "1:7946"}, nil)
	eventually(t, 30*time.Second, "b joins a", func() error {
		if s := statusOf(a.Node, "b"); s != "alive" {
			return fmt.Errorf("b is %s at a", s)
		}
		return nil
	})
	var slots []string
	claimed := time.Now().Add(-time.Hour).UnixMilli()
	for i := range claims {
		an := announce.Announcement{Kind: announce.KindPodBlock, Node: fmt.Sprintf("worker-%03d", i), Claimed: claimed,
			Prefixes: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 7, byte(i), 0}), 24)}}
		if err := a.Announce(an); err != nil {
			t.Fatal(err)
		}
		an.Origin, an.Cluster = "a", c.id
		slots = append(slots, an.Slot())
	}
	if err := a.Announce(announce.Announcement{Kind: announce.KindPodBlock, Node: "bad", Claimed: claimed}); err == nil {
		t.Fatal("a pod block claim without a block was accepted for sending")
	}
	missing := func() []string {
		var out []string
		for _, s := range slots {
			if _, ok := b.State().Get(s); !ok {
				out = append(out, s)
			}
		}
		return out
	}
	eventually(t, 90*time.Second, "b holds every claim", func() error {
		if m := missing(); len(m) > 0 {
			return fmt.Errorf("b misses %d of %d claims, e.g. %s", len(m), claims, m[0])
		}
		return nil
	})
	// Two rounds: with the base TTL (3 s) the claims would lapse before their re-sign.
	for end := time.Now().Add(12 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if m := missing(); len(m) > 0 {
			t.Fatalf("b lost %d of %d claims after holding all, e.g. %s", len(m), claims, m[0])
		}
	}
	an, _ := b.State().Get(slots[0])
	if life := time.Until(an.ExpiresAt()); life <= 3*time.Second {
		t.Errorf("a claim re-signed in a %d s round lives %s, not longer than the base TTL", claims/perSecond, life)
	}
}

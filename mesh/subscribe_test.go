package mesh

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/patronus/patronus/mesh/announce"
)

// Subscribe wakes its reader on a join, an accepted announcement and a leave (with the
// announcements it withdraws), and a cancelled subscription is never written again.
func TestSubscribeWakesOnChanges(t *testing.T) {
	c := newTestCluster(t, "east", "10.244.0.0/16")
	base := loopbackBase()
	a := startNode(t, c, "a", base+"1", nil, nil)
	changes, cancel := a.Subscribe()
	defer cancel()
	drain := func() {
		for {
			select {
			case <-changes:
			default:
				return
			}
		}
	}
	// waitFor waits for a wake-up after which cond holds (each wake-up re-checks it, as a
	// follower re-reads the state). No resync here: without a wake-up it fails.
	waitFor := func(what string, cond func() error) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case <-changes:
				if cond() == nil {
					return
				}
			case <-deadline:
				t.Fatalf("%s: no wake-up after which it held: %v", what, cond())
			}
		}
	}
	drain()
	b := startNode(t, c, "b", base+"2", []string{base + "1:7946"}, nil)
	waitFor("b joined", func() error {
		if s := statusOf(a.Node, "b"); s != "alive" {
			return fmt.Errorf("b is %s", s)
		}
		return nil
	})
	blk := netip.MustParsePrefix("10.244.7.0/24")
	if err := b.Announce(announce.Announcement{Kind: announce.KindPodBlock, Prefixes: []netip.Prefix{blk}, Claimed: time.Now().UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	hasClaim := func() bool {
		for _, an := range a.State().List() {
			if an.Origin == "b" && an.Kind == announce.KindPodBlock {
				return true
			}
		}
		return false
	}
	waitFor("b's claim accepted", func() error {
		if !hasClaim() {
			return fmt.Errorf("no podblock of b")
		}
		return nil
	})
	b.stop() // a graceful leave: a withdraws b's announcements
	waitFor("b left, its claim withdrawn", func() error {
		if hasClaim() {
			return fmt.Errorf("b's claim still held (b %s)", statusOf(a.Node, "b"))
		}
		return nil
	})

	cancel()
	drain()
	a.notify()
	select {
	case <-changes:
		t.Fatal("a cancelled subscription was woken")
	default:
	}
}

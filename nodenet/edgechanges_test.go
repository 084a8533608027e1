package nodenet

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A wake-up on EdgeOptions.Changes makes the controller re-read the view at once: with a
// resync of an hour, a member that appears with a claim is routed only because of it.
func TestEdgeChangesReconcileAtOnce(t *testing.T) {
	var mu sync.Mutex
	var members []EdgeMember
	view := func() []EdgeMember {
		mu.Lock()
		defer mu.Unlock()
		return append([]EdgeMember(nil), members...)
	}
	changes := make(chan struct{}, 1)
	e, err := NewEdge(EdgeOptions{NodeName: "n1", NodeIP: ip("192.168.1.1"), ClusterCIDR: pfx("10.244.0.0/16"),
		ConfListPath: filepath.Join(t.TempDir(), "10-patronus.conflist"), Datapath: nopDP{}, Settle: -1,
		Resync: time.Hour, Members: view, Publish: func(string) error { return nil }, Changes: changes})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	wait := func(what string, cond func(Status) error) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := cond(e.Status())
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("own block claimed", func(s Status) error {
		if !s.Block.IsValid() {
			return fmt.Errorf("no block: %+v", s)
		}
		return nil
	})
	mu.Lock()
	members = []EdgeMember{{Name: "n2", Addr: ip("192.168.1.2"), Claim: "10.244.200.0/24@1"}}
	mu.Unlock()
	changes <- struct{}{}
	wait("n2's block routed after the wake-up", func(s Status) error {
		if s.Peers != 1 || len(s.Routes) != 1 || s.Routes[0].Dst != pfx("10.244.200.0/24") {
			return fmt.Errorf("peers %d routes %+v", s.Peers, s.Routes)
		}
		return nil
	})
}

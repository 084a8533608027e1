package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/patronus/patronus/manifests"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/nodenet"
)

func TestBaseConfList(t *testing.T) {
	installed := `{"cniVersion":"1.0.0","name":"patronus-k8s","plugins":[{"type":"patronus-cni","bridge":"br9","mtu":1400,` +
		`"ipam":{"type":"host-local","subnet":"10.244.7.0/24"},"sdwan":{"cluster_id":"old"}},{"type":"portmap"}]}`
	for _, tc := range []struct {
		name      string
		file      string // "" = no conflist installed
		clusterID string
		wantID    string
		wantMTU   bool // the installed file's own field kept
	}{
		{name: "none installed: embedded default", clusterID: "c1", wantID: "c1"},
		{name: "none installed, no id: embedded as is", clusterID: "", wantID: "prod-us-west"},
		{name: "installed: kept, id set", file: installed, clusterID: "c2", wantID: "c2", wantMTU: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), manifests.ConfListName)
			if tc.file != "" {
				os.WriteFile(path, []byte(tc.file), 0o644)
			}
			b, err := baseConfList(path, tc.clusterID)
			if err != nil {
				t.Fatal(err)
			}
			var doc struct {
				Plugins []map[string]any `json:"plugins"`
			}
			if err := json.Unmarshal(b, &doc); err != nil {
				t.Fatalf("%v: %s", err, b)
			}
			p := doc.Plugins[0]
			if id := p["sdwan"].(map[string]any)["cluster_id"]; id != tc.wantID {
				t.Errorf("cluster_id %v, want %s", id, tc.wantID)
			}
			if _, ok := p["mtu"]; ok != tc.wantMTU {
				t.Errorf("mtu present %v, want %v: %s", ok, tc.wantMTU, b)
			}
			if tc.file != "" && len(doc.Plugins) != 2 {
				t.Errorf("other plugins dropped: %s", b)
			}
		})
	}
	// An unreadable conflist (a directory) is an error, not the default.
	dir := t.TempDir()
	if _, err := baseConfList(dir, "c"); err == nil {
		t.Fatal("a directory as conflist was accepted")
	}
}

type recAnnouncer struct {
	mu   sync.Mutex
	got  []announce.Announcement
	fail bool
}

func (r *recAnnouncer) Announce(a announce.Announcement) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return errors.New("mesh down")
	}
	r.got = append(r.got, a)
	return nil
}

func (r *recAnnouncer) list() []announce.Announcement {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// The block is announced signed once per (block, claim time, mesh node): not before the
// mesh or the block exists, again when the mesh node is replaced or the block changes,
// and retried after a failure.
func TestAnnounceBlock(t *testing.T) {
	var mu sync.Mutex
	st := nodenet.Status{}
	var m blockAnnouncer
	set := func(s nodenet.Status, to blockAnnouncer) { mu.Lock(); st, m = s, to; mu.Unlock() }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		announceBlock(ctx, 5*time.Millisecond, func() nodenet.Status { mu.Lock(); defer mu.Unlock(); return st },
			func() blockAnnouncer { mu.Lock(); defer mu.Unlock(); return m }, slog.New(slog.DiscardHandler))
	}()
	defer func() { cancel(); <-done }()
	wait := func(r *recAnnouncer, n int) []announce.Announcement {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if got := r.list(); len(got) >= n {
				time.Sleep(30 * time.Millisecond) // nothing more may come
				if got = r.list(); len(got) != n {
					t.Fatalf("%d announcements, want %d: %+v", len(got), n, got)
				}
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d announcements, want %d", len(r.list()), n)
			}
		}
	}
	at := time.UnixMilli(1_700_000_000_000)
	b1, b2 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.2.0/24")
	r1 := &recAnnouncer{}
	set(nodenet.Status{}, r1) // mesh, no block yet
	time.Sleep(30 * time.Millisecond)
	set(nodenet.Status{Block: b1, Source: nodenet.SourceLease, ClaimedAt: at}, r1)
	if got := wait(r1, 1); got[0].Kind != announce.KindPodBlock || got[0].Prefixes[0] != b1 || got[0].Claimed != at.UnixMilli() {
		t.Fatalf("announced %+v", got[0])
	}
	r2 := &recAnnouncer{fail: true} // the mesh restarted, failing at first
	set(nodenet.Status{Block: b1, Source: nodenet.SourceLease, ClaimedAt: at}, r2)
	time.Sleep(30 * time.Millisecond)
	r2.mu.Lock()
	r2.fail = false
	r2.mu.Unlock()
	wait(r2, 1)
	set(nodenet.Status{Block: b2, Source: nodenet.SourceLease, ClaimedAt: at.Add(time.Second)}, r2)
	if got := wait(r2, 2); got[1].Prefixes[0] != b2 {
		t.Fatalf("re-claim announced %+v", got[1])
	}
	set(nodenet.Status{Block: b2, Source: nodenet.SourceLease, ClaimedAt: at.Add(time.Second)}, nil) // mesh gone
	time.Sleep(30 * time.Millisecond)
	wait(r2, 2)
	if len(r1.list()) != 1 {
		t.Fatalf("old mesh node got %d announcements", len(r1.list()))
	}
}

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
	"github.com/patronus/patronus/nodenet/alloc"
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

// Other nodes' claims are announced on their behalf once per claim and mesh node, a
// changed claim again, a vanished one withdrawn; a failure is retried; a new mesh node
// gets them all; the count reported follows.
func TestRelayClaims(t *testing.T) {
	var mu sync.Mutex
	var claims []alloc.Claim
	var m blockAnnouncer
	reported := -1
	set := func(cs []alloc.Claim, to blockAnnouncer) { mu.Lock(); claims, m = cs, to; mu.Unlock() }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		relayClaims(ctx, 5*time.Millisecond, func() []alloc.Claim { mu.Lock(); defer mu.Unlock(); return slices.Clone(claims) },
			func() blockAnnouncer { mu.Lock(); defer mu.Unlock(); return m }, slog.New(slog.DiscardHandler),
			func(n int) { mu.Lock(); reported = n; mu.Unlock() })
	}()
	defer func() { cancel(); <-done }()
	// wait returns r's announcements once there are n (and no more come), as
	// "node=block" or "-node" for a withdrawal, with the count reported then.
	wait := func(r *recAnnouncer, n int) ([]string, int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if len(r.list()) >= n {
				time.Sleep(40 * time.Millisecond)
				var out []string
				for _, a := range r.list() {
					if a.Kind != announce.KindPodBlock || a.Node == "" {
						t.Fatalf("not a claim on another node's behalf: %+v", a)
					}
					if a.Withdraw {
						out = append(out, "-"+a.Node)
					} else {
						out = append(out, a.Node+"="+a.Prefixes[0].String())
					}
				}
				if len(out) != n {
					t.Fatalf("announcements %v, want %d", out, n)
				}
				mu.Lock()
				defer mu.Unlock()
				return out, reported
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d announcements, want %d", len(r.list()), n)
			}
		}
	}
	at := time.UnixMilli(1_700_000_000_000)
	c := func(node, block string, d time.Duration) alloc.Claim {
		return alloc.Claim{Node: node, Block: netip.MustParsePrefix(block), At: at.Add(d)}
	}
	r1 := &recAnnouncer{}
	set([]alloc.Claim{c("n1", "10.244.1.0/24", 0), c("n2", "10.244.2.0/24", 0)}, nil) // no mesh yet
	time.Sleep(30 * time.Millisecond)
	set([]alloc.Claim{c("n1", "10.244.1.0/24", 0), c("n2", "10.244.2.0/24", 0)}, r1)
	if got, n := wait(r1, 2); !slices.Equal(got, []string{"n1=10.244.1.0/24", "n2=10.244.2.0/24"}) || n != 2 {
		t.Fatalf("first announcements %v (reported %d)", got, n)
	}
	set([]alloc.Claim{c("n2", "10.244.3.0/24", time.Second)}, r1) // n1 released, n2 re-claimed
	if got, n := wait(r1, 4); !slices.Equal(got[2:], []string{"n2=10.244.3.0/24", "-n1"}) || n != 1 {
		t.Fatalf("after the change %v (reported %d)", got, n)
	}
	r2 := &recAnnouncer{fail: true} // the mesh restarted, failing at first
	set([]alloc.Claim{c("n2", "10.244.3.0/24", time.Second)}, r2)
	time.Sleep(30 * time.Millisecond)
	r2.mu.Lock()
	r2.fail = false
	r2.mu.Unlock()
	if got, n := wait(r2, 1); got[0] != "n2=10.244.3.0/24" || n != 1 {
		t.Fatalf("new mesh node got %v (reported %d)", got, n)
	}
	set(nil, nil) // mesh gone
	time.Sleep(30 * time.Millisecond)
	mu.Lock()
	n := reported
	mu.Unlock()
	if n != 0 || len(r1.list()) != 4 || len(r2.list()) != 1 {
		t.Fatalf("mesh gone: reported %d, %d and %d announcements", n, len(r1.list()), len(r2.list()))
	}
}

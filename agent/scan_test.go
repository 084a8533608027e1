package agent

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/patronus/patronus/kube"
	"github.com/patronus/patronus/store"
	"github.com/prometheus/client_golang/prometheus"
)

// TestStoreScanner checks which database changes queue a pod: the plugin writes through
// its own connection (a separate process in production), as here.
func TestStoreScanner(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	plugin, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer plugin.Close()

	var mu sync.Mutex
	var queued []string
	m, _ := newMetrics(prometheus.NewRegistry())
	a := &agent{opts: Options{NodeName: "n", ResyncPeriod: time.Hour}.withDefaults(), db: db, metrics: m}
	a.log = a.opts.Logger
	a.pods = &kube.Controller{Name: "pods"}
	sc := newStoreScanner(a)
	defer sc.close()
	sc.enqueue = func(k string) { mu.Lock(); queued = append(queued, k); mu.Unlock() }
	// What the scan queued since the last call, sorted.
	drain := func() []string {
		mu.Lock()
		defer mu.Unlock()
		q := queued
		queued = nil
		slices.Sort(q)
		return q
	}
	put := func(id, name string, ip string) {
		t.Helper()
		if err := plugin.PutPod(ctx, store.Pod{ContainerID: id, IfName: "eth0", Namespace: "default", Name: name,
			IPs: []netip.Prefix{netip.MustParsePrefix(ip)}}); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name   string
		change func()
		want   []string
	}{
		{"empty database", func() {}, nil},
		{"two ADDs", func() { put("c1", "a", "10.0.0.1/16"); put("c2", "b", "10.0.0.2/16") }, []string{"default/a", "default/b"}},
		{"nothing changed", func() {}, nil},
		{"agent synced a", func() {
			db.SetPodAPIState(ctx, "c1", "eth0", "u1", "bulk", nil, nil, time.Now())
		}, []string{"default/a"}},
		{"unrelated kv write", func() { plugin.Set(ctx, "x", "y") }, nil},
		{"repeated ADD of a resets its API state", func() { put("c1", "a", "10.0.0.9/16") }, []string{"default/a"}},
		{"row without pod name ignored", func() {
			plugin.PutPod(ctx, store.Pod{ContainerID: "raw", IfName: "eth0"})
		}, nil},
		{"DEL of b", func() { plugin.DeletePod(ctx, "c2", "eth0") }, []string{"default/b"}},
	}
	for _, s := range steps {
		s.change()
		sc.scan(ctx)
		if got := drain(); !slices.Equal(got, s.want) {
			t.Errorf("%s: queued %v, want %v", s.name, got, s.want)
		}
	}
	if rows := a.rows.get("default/a"); len(rows) != 1 || rows[0].IPs[0].String() != "10.0.0.9/16" {
		t.Errorf("row index: %+v", rows)
	}
	if rows := a.rows.get("default/b"); len(rows) != 0 {
		t.Errorf("deleted row still indexed: %+v", rows)
	}
}

package store

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestPodRoundTrip(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "db", "k8s-sdwan.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p := Pod{ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/x", Namespace: "default", Name: "web",
		IPs: []netip.Prefix{netip.MustParsePrefix("10.244.1.10/16")}}
	if err := db.PutPod(ctx, p); err != nil {
		t.Fatal(err)
	}
	got, err := db.GetPod(ctx, "c1", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "web" || len(got.IPs) != 1 || got.IPs[0] != p.IPs[0] || got.CreatedAt.IsZero() {
		t.Fatalf("round trip: got %+v", got)
	}
	if err := db.SetPodAPIState(ctx, "c1", "eth0", "uid-1", "bulk", map[string]string{"app": "web"}, nil, got.CreatedAt); err != nil {
		t.Fatal(err)
	}
	got, _ = db.GetPod(ctx, "c1", "eth0")
	if got.Labels["app"] != "web" || got.QoSClass != "bulk" || got.APISyncedAt.IsZero() {
		t.Fatalf("API state not stored: %+v", got)
	}
	if err := db.DeletePod(ctx, "c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := db.DeletePod(ctx, "c1", "eth0"); err != nil {
		t.Fatalf("second delete must succeed: %v", err)
	}
	if _, err := db.GetPod(ctx, "c1", "eth0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
}

func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "k8s-sdwan.db")
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// Separate handles, as separate plugin processes would have.
			db, err := Open(ctx, path)
			if err != nil {
				errs <- err
				return
			}
			defer db.Close()
			errs <- db.PutPod(ctx, Pod{ContainerID: string(rune('a'+i%26)) + strings.Repeat("x", i), IfName: "eth0"})
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	db, _ := Open(ctx, path)
	defer db.Close()
	if n, _ := db.CountPods(ctx); n != 50 {
		t.Fatalf("want 50 pods, got %d", n)
	}
}

func TestCorruptDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k8s-sdwan.db")
	if err := os.WriteFile(path, []byte(strings.Repeat("this is not sqlite ", 400)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), path)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("want ErrCorrupt naming %s, got %v", path, err)
	}
}

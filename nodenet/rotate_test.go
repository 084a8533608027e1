package nodenet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/patronus/patronus/dataplane/wg"
	kfake "github.com/patronus/patronus/kube/kclient/fake"
	"github.com/patronus/patronus/nodenet/alloc"
	"github.com/patronus/patronus/store"
)

func openDB(t *testing.T) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "k8s-sdwan.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func annotation(t *testing.T, client *fake.Clientset, name string) string {
	t.Helper()
	n, err := client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n.Annotations[AnnotationWGKey]
}

// A rotation saves the new key, applies it to the device, publishes it on the Node and
// answers old and new; a failing device keeps the old key in the database; with
// encryption off there is nothing to rotate (409 on the local API).
func TestRotateKeyAPIMode(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", "10.244.1.0/24"), node("n2", "192.168.1.2", "10.244.2.0/24"))
	fw := &fakeWG{}
	o := Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: filepath.Join(t.TempDir(), "10-patronus.conflist"),
		Datapath: drained(t), DB: db, Resync: 100 * time.Millisecond, Encrypt: Encrypt{Mode: EncryptionWireGuard, Link: fw}}
	first, err := LoadOrCreateWGKey(ctx, db, time.Now()) // before the controller makes one
	if err != nil {
		t.Fatal(err)
	}
	c, stop := runCtrl(t, o)
	defer stop()
	waitFor(t, "first key on the Node", func() error {
		if got := annotation(t, client, "n1"); got != first.PublicKey().String() {
			return fmt.Errorf("annotation %q", got)
		}
		return nil
	})

	srv := httptest.NewServer(c.RotateHandler())
	defer srv.Close()
	resp, err := http.Post(srv.URL, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	var res RotateResult
	err = json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d: %v", resp.StatusCode, err)
	}
	if res.PreviousPublicKey != first.PublicKey().String() || res.PublicKey == res.PreviousPublicKey || res.Warning != "" || res.RotatedAt.IsZero() {
		t.Fatalf("result %+v (first key %s)", res, first.PublicKey())
	}
	stored, err := LoadOrCreateWGKey(ctx, db, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fw.mu.Lock()
	spec := fw.spec
	fw.mu.Unlock()
	if stored.PublicKey().String() != res.PublicKey || spec.PrivateKey != stored {
		t.Fatalf("stored %s, device %s, answered %s", stored.PublicKey(), spec.PrivateKey.PublicKey(), res.PublicKey)
	}
	// Published by the time the answer came (no wait: the rotation reconciles at once).
	if got := annotation(t, client, "n1"); got != res.PublicKey {
		t.Fatalf("annotation %q after the rotation, want %q", got, res.PublicKey)
	}
	if st := c.Status(); st.WireGuard == nil || st.WireGuard.PublicKey != res.PublicKey {
		t.Fatalf("status %+v", st.WireGuard)
	}

	// The device refuses the next key: error, old key kept everywhere.
	fw.mu.Lock()
	fw.failing = errors.New("device gone")
	fw.mu.Unlock()
	if r, err := c.RotateKey(ctx); err == nil || r.PublicKey != "" {
		t.Fatalf("rotation with a failing device: %+v, %v", r, err)
	}
	if k, _ := LoadOrCreateWGKey(ctx, db, time.Now()); k != stored {
		t.Fatalf("database key %s after a failed rotation, want %s", k.PublicKey(), stored.PublicKey())
	}
	// (The annotation is withdrawn meanwhile: the failing device is down for every
	// reconcile, as it must be.)
	fw.mu.Lock()
	if fw.spec.PrivateKey != stored {
		t.Fatalf("device key %s after a failed rotation, want %s", fw.spec.PrivateKey.PublicKey(), stored.PublicKey())
	}
	fw.failing = nil
	fw.mu.Unlock()
	stop()

	// Encryption off: 409, nothing changes.
	o.Encrypt, o.Datapath = Encrypt{Link: fw}, drained(t)
	c, stop2 := runCtrl(t, o)
	defer stop2()
	srv2 := httptest.NewServer(c.RotateHandler())
	defer srv2.Close()
	resp, err = http.Post(srv2.URL, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("rotation with encryption off: HTTP %d, want 409", resp.StatusCode)
	}
	if _, err := c.RotateKey(ctx); !errors.Is(err, ErrNotEncrypting) {
		t.Fatalf("RotateKey with encryption off: %v", err)
	}
}

// A peer that rotated its key (new Node annotation) gets the new key in place of the old
// one with a keepalive for one update only (it starts the handshake at once), then none.
func TestPeerRotatedKeySwapped(t *testing.T) {
	ctx := context.Background()
	k2 := key(t).PublicKey()
	n2 := node("n2", "192.168.1.2", "10.244.2.0/24")
	n2.Annotations = map[string]string{AnnotationWGKey: k2.String()}
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", "10.244.1.0/24"), n2)
	fw := &fakeWG{}
	_, stop := runCtrl(t, Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: filepath.Join(t.TempDir(), "10-patronus.conflist"),
		Datapath: drained(t), Resync: 100 * time.Millisecond, Encrypt: Encrypt{Mode: EncryptionWireGuard, Key: key(t), Link: fw}})
	defer stop()
	peerKeys := func() []wgtypes.Key {
		fw.mu.Lock()
		defer fw.mu.Unlock()
		var ks []wgtypes.Key
		for k, p := range fw.peers {
			if p.Keepalive != 0 {
				return nil // a keepalive left on
			}
			ks = append(ks, k)
		}
		return ks
	}
	waitFor(t, "n2's first key", func() error {
		if ks := peerKeys(); !slices.Equal(ks, []wgtypes.Key{k2}) {
			return fmt.Errorf("peers %v", ks)
		}
		return nil
	})
	fw.mu.Lock()
	kicked := len(fw.kicked)
	fw.mu.Unlock()
	if kicked != 0 {
		t.Fatalf("a new peer (no rotation) got a keepalive: %v", fw.kicked)
	}
	k2b := key(t).PublicKey()
	obj, _ := client.CoreV1().Nodes().Get(ctx, "n2", metav1.GetOptions{})
	obj.Annotations[AnnotationWGKey] = k2b.String()
	if _, err := client.CoreV1().Nodes().Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n2's new key in place of the old", func() error {
		if ks := peerKeys(); !slices.Equal(ks, []wgtypes.Key{k2b}) {
			return fmt.Errorf("peers %v", ks)
		}
		return nil
	})
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if !slices.Equal(fw.kicked, []wgtypes.Key{k2b}) {
		t.Fatalf("keepalive kicks %v, want the new key once", fw.kicked)
	}
}

// Edge mode: the rotation re-publishes the same claim with the new key at once.
func TestRotateKeyEdgeMode(t *testing.T) {
	type pubCall struct{ claim, pub string }
	var mu sync.Mutex
	var calls []pubCall
	db := openDB(t)
	first := key(t)
	fw := &fakeWG{}
	e, err := NewEdge(EdgeOptions{NodeName: "n1", NodeIP: ip("192.168.1.1"), ClusterCIDR: pfx("10.244.0.0/16"), DB: db,
		ConfListPath: filepath.Join(t.TempDir(), "10-patronus.conflist"), Datapath: drained(t), Settle: -1,
		Members: func() []EdgeMember {
			return []EdgeMember{{Name: "n2", Addr: ip("192.168.1.2"), Claim: FormatClaim(alloc.Claim{Block: pfx("10.244.9.0/24"), At: time.Unix(1_700_000_000, 0)})}}
		},
		PublishKey: func(claim, pub string) error {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, pubCall{claim, pub})
			return nil
		},
		Encrypt: Encrypt{Mode: EncryptionWireGuard, Key: first, Link: fw}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "device up", func() error {
		if st := e.Status(); st.WireGuard == nil || st.WireGuard.PublicKey != first.PublicKey().String() {
			return fmt.Errorf("status %+v", st.WireGuard)
		}
		return nil
	})
	res, err := e.RotateKey(context.Background())
	if err != nil || res.PreviousPublicKey != first.PublicKey().String() {
		t.Fatalf("rotate: %+v, %v", res, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) < 2 {
		t.Fatalf("publications %+v: want the claim, then the claim with the new key", calls)
	}
	a, b := calls[0], calls[len(calls)-1]
	if a.pub != first.PublicKey().String() || b.pub != res.PublicKey || a.claim != b.claim {
		t.Fatalf("publications %+v: want claim %s with the first key, then with %s", calls, a.claim, res.PublicKey)
	}
	if k, _ := LoadOrCreateWGKey(context.Background(), db, time.Now()); k.PublicKey().String() != res.PublicKey {
		t.Fatalf("database key %s, want %s", k.PublicKey(), res.PublicKey)
	}
}

// Periodic rotation (Encrypt.KeyRotation): due from the key's creation time in the
// database, so a key older than the interval is rotated at the first reconcile, and the
// next one an interval after that; off (0) never rotates.
func TestPeriodicKeyRotation(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	old, _, err := wg.LoadOrCreateKey(ctx, db, KVWGKey, now.Add(-2*time.Hour)) // made 2h ago
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", "10.244.1.0/24"))
	fw := &fakeWG{}
	o := Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: filepath.Join(t.TempDir(), "10-patronus.conflist"),
		Datapath: drained(t), DB: db, Resync: 50 * time.Millisecond, Now: clock,
		Encrypt: Encrypt{Mode: EncryptionWireGuard, Link: fw, KeyRotation: time.Hour}}
	if _, err := New(Options{Client: o.Client, NodeName: "n1", Encrypt: Encrypt{Mode: EncryptionWireGuard, KeyRotation: time.Second}}); err == nil {
		t.Fatal("a rotation every second was accepted")
	}
	_, stop := runCtrl(t, o)
	defer stop()
	stored := func() (wgtypes.Key, time.Time) {
		k, created, _, err := wg.LoadKey(ctx, db, KVWGKey)
		if err != nil {
			t.Fatal(err)
		}
		return k, created
	}
	var second wgtypes.Key
	waitFor(t, "the 2h old key rotated and published", func() error {
		k, created := stored()
		if k == old || !created.Equal(now) {
			return fmt.Errorf("stored key made %s (old key still: %v)", created, k == old)
		}
		if got := annotation(t, client, "n1"); got != k.PublicKey().String() {
			return fmt.Errorf("annotation %q", got)
		}
		second = k
		return nil
	})
	advance(59 * time.Minute)
	time.Sleep(300 * time.Millisecond) // several resyncs
	if k, _ := stored(); k != second {
		t.Fatal("rotated again before the interval")
	}
	advance(2 * time.Minute)
	waitFor(t, "rotated again an interval later", func() error {
		if k, _ := stored(); k == second {
			return errors.New("not yet")
		}
		return nil
	})
	stop()

	// Off: a key of any age stays.
	k3, _ := stored()
	advance(1000 * time.Hour)
	o.Encrypt.KeyRotation, o.Datapath = 0, drained(t)
	_, stop2 := runCtrl(t, o)
	defer stop2()
	time.Sleep(300 * time.Millisecond)
	if k, _ := stored(); k != k3 {
		t.Fatal("rotated with periodic rotation off")
	}
}

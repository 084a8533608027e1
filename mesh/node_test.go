package mesh

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/mesh/trust"
	"github.com/patronus/patronus/store"
)

// cluster is a test cluster: a key and a verifier trusting it (and any pinned others).
type testCluster struct {
	id  string
	key ed25519.PrivateKey
	v   *trust.Verifier
}

func newTestCluster(t testing.TB, id string, cidr string, pinned ...*testCluster) *testCluster {
	t.Helper()
	k, err := trust.GenerateClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{id: id, key: k}
	var remotes []trust.Cluster
	for _, p := range pinned {
		remotes = append(remotes, trust.Cluster{ID: p.id, PublicKey: p.key.Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}})
	}
	c.v, err = trust.NewVerifier(trust.Cluster{ID: id, PublicKey: k.Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{netip.MustParsePrefix(cidr)}}, remotes...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// loopbackBase picks a random 127.x.y.0 block so parallel test runs do not collide.
func loopbackBase() string { return fmt.Sprintf("127.%d.%d.", 10+rand.IntN(200), 1+rand.IntN(250)) }

type testNode struct {
	*Node
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
}

func startNode(t *testing.T, c *testCluster, name, addr string, seeds []string, mod func(*Options)) *testNode {
	t.Helper()
	id, err := trust.NewIdentity(c.id, c.key, name, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{NodeName: name, ClusterID: c.id, Identity: id, Verifier: c.v, BindAddr: addr, BindPort: 7946,
		Seeds: seeds, DisableBeacons: true, Profile: "local", Refresh: time.Second, TTL: 3 * time.Second,
		ReconnectInterval: time.Second, Tags: Tags{Role: "gateway", Version: "test"}}
	if mod != nil {
		mod(&o)
	}
	n, err := New(o)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tn := &testNode{Node: n, cancel: cancel, done: make(chan struct{})}
	go func() {
		n.Run(ctx)
		close(tn.done)
	}()
	t.Cleanup(tn.stop)
	return tn
}

func (tn *testNode) stop() {
	tn.cancel()
	select {
	case <-tn.done:
	case <-time.After(15 * time.Second):
	}
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func statusOf(n *Node, name string) string {
	for _, m := range n.Members() {
		if m.Name == name {
			return m.Status
		}
	}
	return "absent"
}

func aliveCount(n *Node) int {
	c := 0
	for _, m := range n.Members() {
		if m.Status == "alive" {
			c++
		}
	}
	return c
}

func TestMeshConvergesAndRejectsStrangers(t *testing.T) {
	east := newTestCluster(t, "east", "10.244.0.0/16")
	base := loopbackBase()
	seed := base + "1:7946"
	var nodes []*testNode
	for i := 1; i <= 4; i++ {
		nodes = append(nodes, startNode(t, east, fmt.Sprintf("east-%d", i), fmt.Sprintf("%s%d", base, i), []string{seed},
			func(o *Options) { o.Prefixes = []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))} }))
	}
	for _, n := range nodes {
		eventually(t, 40*time.Second, n.o.NodeName+" sees all", func() error {
			if c := aliveCount(n.Node); c != 4 {
				return fmt.Errorf("%d alive", c)
			}
			if k := len(n.State().List()); k != 4 {
				return fmt.Errorf("%d announcements", k)
			}
			return nil
		})
	}
	// An agent of another cluster, whose key east has not pinned, tries to join.
	north := newTestCluster(t, "north", "10.9.0.0/16")
	intruder := startNode(t, north, "north-1", base+"9", []string{seed}, nil)
	time.Sleep(3 * time.Second)
	for _, n := range nodes {
		if s := statusOf(n.Node, "north-1"); s != "absent" {
			t.Fatalf("%s admitted the intruder (status %s)", n.o.NodeName, s)
		}
	}
	if aliveCount(intruder.Node) != 1 {
		t.Fatalf("intruder sees %v", intruder.Members())
	}

	// A graceful leave withdraws the node's announcements at once.
	nodes[3].stop()
	eventually(t, 10*time.Second, "leave withdraws", func() error {
		for _, n := range nodes[:3] {
			if s := statusOf(n.Node, "east-4"); s != "left" {
				return fmt.Errorf("%s sees east-4 %s", n.o.NodeName, s)
			}
			if k := len(n.State().List()); k != 3 {
				return fmt.Errorf("%s has %d announcements", n.o.NodeName, k)
			}
		}
		return nil
	})
	// A crash: marked failed, its announcements expire after their TTL.
	nodes[2].cancel()
	nodes[2].Shutdown()
	eventually(t, 15*time.Second, "crash detected and expired", func() error {
		for _, n := range nodes[:2] {
			if s := statusOf(n.Node, "east-3"); s != "failed" {
				return fmt.Errorf("%s sees east-3 %s", n.o.NodeName, s)
			}
			if k := len(n.State().List()); k != 2 {
				return fmt.Errorf("%s has %d announcements", n.o.NodeName, k)
			}
		}
		return nil
	})
	// Restart: it rejoins and re-announces.
	startNode(t, east, "east-3", base+"3", []string{seed}, func(o *Options) {
		o.Prefixes = []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}
	})
	eventually(t, 15*time.Second, "restart rejoins", func() error {
		for _, n := range nodes[:2] {
			if s := statusOf(n.Node, "east-3"); s != "alive" {
				return fmt.Errorf("%s sees east-3 %s", n.o.NodeName, s)
			}
			if k := len(n.State().List()); k != 3 {
				return fmt.Errorf("%s has %d announcements", n.o.NodeName, k)
			}
		}
		return nil
	})
}

func TestPinnedRemoteClusterAndUnauthorisedPrefix(t *testing.T) {
	west := newTestCluster(t, "west", "10.2.0.0/16")
	east := newTestCluster(t, "east", "10.244.0.0/16", west)
	westPinsEast := newTestCluster(t, "west", "10.2.0.0/16")
	_ = westPinsEast
	base := loopbackBase()
	e1 := startNode(t, east, "east-1", base+"1", nil, nil)
	// west's own verifier must trust east too, else it refuses east's members in merges.
	westV, err := trust.NewVerifier(
		trust.Cluster{ID: "west", PublicKey: west.key.Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}},
		trust.Cluster{ID: "east", PublicKey: east.key.Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}})
	if err != nil {
		t.Fatal(err)
	}
	w1 := startNode(t, &testCluster{id: "west", key: west.key, v: westV}, "west-1", base+"2", []string{base + "1:7946"}, nil)
	eventually(t, 10*time.Second, "pinned remote admitted", func() error {
		if aliveCount(e1.Node) != 2 || aliveCount(w1.Node) != 2 {
			return fmt.Errorf("east sees %d, west sees %d", aliveCount(e1.Node), aliveCount(w1.Node))
		}
		return nil
	})
	// west announces east's range: signed and certified, but not authorised.
	if err := w1.Announce(announce.Announcement{Kind: announce.KindPrefix, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24")}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "unauthorised prefix counted", func() error {
		if c := e1.Receiver().Rejected(announce.ReasonUnauthorisedPrefix); c < 1 {
			return fmt.Errorf("count %v", c)
		}
		return nil
	})
	if k := len(e1.State().List()); k != 0 {
		t.Fatalf("east accepted %v", e1.State().List())
	}
	// A proper announcement of west's own range is accepted.
	if err := w1.Announce(announce.Announcement{Kind: announce.KindPrefix, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.2.1.0/24")}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "authorised prefix accepted", func() error {
		if k := len(e1.State().List()); k != 1 {
			return fmt.Errorf("%d", k)
		}
		return nil
	})
}

func TestGossipKeyRotation(t *testing.T) {
	c := newTestCluster(t, "east", "10.244.0.0/16")
	base := loopbackBase()
	k1, _ := trust.GenerateGossipKey()
	k2, _ := trust.GenerateGossipKey()
	dir := t.TempDir()
	var nodes []*testNode
	for i := 1; i <= 3; i++ {
		kf := filepath.Join(dir, fmt.Sprintf("keyring-%d.json", i))
		nodes = append(nodes, startNode(t, c, fmt.Sprintf("n%d", i), fmt.Sprintf("%s%d", base, i), []string{base + "1:7946"},
			func(o *Options) { o.GossipKeys = [][]byte{k1}; o.KeyringFile = kf }))
	}
	eventually(t, 10*time.Second, "encrypted mesh forms", func() error {
		if a := aliveCount(nodes[0].Node); a != 3 {
			return fmt.Errorf("%d alive", a)
		}
		return nil
	})
	if err := nodes[0].RotateGossipKey(k2); err != nil {
		t.Fatal(err)
	}
	keys, err := nodes[1].GossipKeys()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[b64(k2)] != 3 {
		t.Fatalf("keys after rotation: %v", keys)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "keyring-3.json"))
	if !strings.Contains(string(b), b64(k2)) || strings.Contains(string(b), b64(k1)) {
		t.Fatalf("keyring file not updated: %s", b)
	}
	// A node with only the old key can no longer join.
	late := startNode(t, c, "n4", base+"4", []string{base + "1:7946"}, func(o *Options) { o.GossipKeys = [][]byte{k1} })
	time.Sleep(2 * time.Second)
	if aliveCount(late.Node) != 1 {
		t.Fatal("node with the removed key joined")
	}
}

func TestEventHandlers(t *testing.T) {
	c := newTestCluster(t, "east", "10.244.0.0/16")
	base := loopbackBase()
	dir := t.TempDir()
	script := fmt.Sprintf(`{ env | grep ^SERF_ | sort; echo ---; cat; } > %s/$SERF_EVENT-$(date +%%s%%N)`, dir)
	h1, err := ParseEventHandler("member-join,member-leave,user:deploy=" + script)
	if err != nil {
		t.Fatal(err)
	}
	a := startNode(t, c, "a", base+"1", nil, func(o *Options) { o.EventHandlers = []EventHandler{h1} })
	b := startNode(t, c, "b", base+"2", []string{base + "1:7946"}, nil)
	eventually(t, 10*time.Second, "join", func() error {
		if aliveCount(a.Node) != 2 {
			return fmt.Errorf("not joined")
		}
		return nil
	})
	if err := b.Broadcast("deploy", []byte("v1.2"), false); err != nil {
		t.Fatal(err)
	}
	if err := b.Broadcast("ignored", []byte("x"), false); err != nil {
		t.Fatal(err)
	}
	b.stop()
	read := func(prefix string) (string, error) {
		ents, _ := os.ReadDir(dir)
		var all []string
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefix) {
				bs, _ := os.ReadFile(filepath.Join(dir, e.Name()))
				all = append(all, string(bs))
			}
		}
		if len(all) == 0 {
			return "", fmt.Errorf("no %s output yet", prefix)
		}
		return strings.Join(all, "\n"), nil
	}
	for _, tc := range []struct{ event, want []string }{
		{[]string{"member-join"}, []string{"SERF_EVENT=member-join", "SERF_SELF_NAME=a", "SERF_SELF_ROLE=gateway", "SERF_TAG_CLUSTER=east", "\tgateway\t", "b\t" + base + "2\t"}},
		{[]string{"user"}, []string{"SERF_EVENT=user", "SERF_USER_EVENT=deploy", "SERF_USER_LTIME=", "---\nv1.2\n"}},
		{[]string{"member-leave"}, []string{"SERF_EVENT=member-leave", "b\t" + base + "2\t"}},
	} {
		eventually(t, 10*time.Second, tc.event[0]+" handler ran", func() error {
			out, err := read(tc.event[0])
			if err != nil {
				return err
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					return fmt.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			return nil
		})
	}
	if out, _ := read("user"); strings.Contains(out, "SERF_USER_EVENT=ignored") {
		t.Fatal("user:deploy filter ran for another event")
	}
}

func TestParseEventHandler(t *testing.T) {
	for _, tc := range []struct {
		spec    string
		filters []string
		script  string
		fail    bool
	}{
		{"./handler.sh", nil, "./handler.sh", false},
		{"member-join=./h.sh", []string{"member-join"}, "./h.sh", false},
		{"member-join,user:deploy=/bin/x", []string{"member-join", "user:deploy"}, "/bin/x", false},
		{"FOO=1 ./x", nil, "FOO=1 ./x", false},
		{"member-jion=./x", nil, "", true},
		{"user=", nil, "", true},
	} {
		h, err := ParseEventHandler(tc.spec)
		if (err != nil) != tc.fail {
			t.Fatalf("%q: err %v", tc.spec, err)
		}
		if !tc.fail && (h.Script != tc.script || strings.Join(h.Filters, ",") != strings.Join(tc.filters, ",")) {
			t.Errorf("%q: got %+v", tc.spec, h)
		}
	}
}

func TestStatePersisted(t *testing.T) {
	c := newTestCluster(t, "east", "10.244.0.0/16")
	base := loopbackBase()
	// The real node database: `patronus status` and a restart read the same key.
	kv, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "k8s-sdwan.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() }) // after the nodes stop (cleanups run last-in first-out)
	n := startNode(t, c, "a", base+"1", nil, func(o *Options) {
		o.Store = kv
		o.Prefixes = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}
		o.TTL = time.Hour
	})
	eventually(t, 5*time.Second, "persisted", func() error {
		s, ok, err := LoadState(context.Background(), kv)
		if err != nil || !ok || len(s.Announcements) != 1 || len(s.Members) != 1 {
			return fmt.Errorf("%+v %v %v", s, ok, err)
		}
		return nil
	})
	n.stop()
	n2 := startNode(t, c, "a", base+"1", nil, func(o *Options) { o.Store = kv })
	if k := len(n2.State().List()); k != 1 {
		t.Fatalf("restart restored %d announcements", k)
	}
}

func b64(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// Realistic full tags stay under serf's 512-byte limit; oversized ones fail at New with a
// clear error instead of being truncated.
func TestTagsFitSerfLimit(t *testing.T) {
	c := newTestCluster(t, "production-eu-west-1", "10.244.0.0/16")
	base := loopbackBase()
	full := Tags{Role: "gateway", Version: "v1.2.3-rc.1+abcdef123456",
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.17.0/24"), netip.MustParsePrefix("fd00:10:244:17::/64")},
		WireGuardKey: "hKw5XbU5eM8SxLmDeAQXrxWmL2dzJ8hJLh0g7mTg8mY=",
		Endpoints:    []string{"203.0.113.17:51820", "198.51.100.17:51820", "[2001:db8::17]:51820"}}
	n := startNode(t, c, "worker-node-17.eu-west-1.compute.internal", base+"1", nil, func(o *Options) { o.Tags = full })
	if got := n.Members()[0].Tags[TagEndpoints]; got != strings.Join(full.Endpoints, ",") {
		t.Fatalf("endpoints tag %q", got)
	}
	id, _ := trust.NewIdentity(c.id, c.key, "x", time.Now(), time.Hour)
	huge := full
	for i := range 20 {
		huge.Endpoints = append(huge.Endpoints, fmt.Sprintf("203.0.113.%d:51820", i))
	}
	_, err := New(Options{NodeName: "x", ClusterID: c.id, Identity: id, Verifier: c.v, BindAddr: base + "2", DisableBeacons: true, Tags: huge})
	if err == nil || !strings.Contains(err.Error(), "512") {
		t.Fatalf("oversized tags: %v", err)
	}
}

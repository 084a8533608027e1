package nodenet

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/patronus/patronus/dataplane/wg"
	kfake "github.com/patronus/patronus/kube/kclient/fake"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/mesh/trust"
	"github.com/patronus/patronus/store"
)

func key(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestComputeEncrypted(t *testing.T) {
	k1, k2, k3 := key(t).PublicKey(), key(t).PublicKey(), key(t).PublicKey()
	local := Local{Name: "n1", Addr: ip("192.168.77.1"), Net: pfx("192.168.77.0/24"), Dev: "eth0", Block: pfx("10.244.1.0/24"),
		Encrypt: true, Key: k1}
	n2 := Peer{Name: "n2", Addr: ip("192.168.77.2"), Blocks: []netip.Prefix{pfx("10.244.2.0/24")}, Key: k2}
	n3 := Peer{Name: "n3", Addr: ip("192.168.78.3"), Blocks: []netip.Prefix{pfx("10.244.3.0/24"), pfx("10.245.3.0/24")}, Key: k3}
	plainN2 := n2
	plainN2.Key = wgtypes.Key{}
	noBlock := local
	noBlock.Block = netip.Prefix{}
	noDevice := local
	noDevice.Key = wgtypes.Key{}
	off := local
	off.Encrypt = false
	port := local
	port.WGPort = 40000
	remote := local
	remote.Remote = []netip.Prefix{pfx("10.250.0.0/16"), pfx("10.244.2.0/25")}
	remoteLast := remote
	remoteLast.Name = "n9"
	n3gw := n3
	n3gw.Gateway = true
	remoteSelfGW := remote
	remoteSelfGW.Gateway = true
	for _, tc := range []struct {
		name   string
		local  Local
		peers  []Peer
		routes []string
		wg     []string // node endpoint allowed-ips
		plain  []string // node: reason
		vxlan  bool
	}{
		{name: "every peer with a key over ptw0 (L2 neighbour or not)", local: local, peers: []Peer{n3, n2},
			routes: []string{"10.244.2.0/24 dev ptw0", "10.244.3.0/24 dev ptw0", "10.245.3.0/24 dev ptw0"},
			wg:     []string{"n2 192.168.77.2:51819 10.244.2.0/24", "n3 192.168.78.3:51819 10.244.3.0/24,10.245.3.0/24"}},
		{name: "mixed rollout: a peer without a key keeps its direct route", local: local, peers: []Peer{plainN2, n3},
			routes: []string{"10.244.2.0/24 via 192.168.77.2 dev eth0", "10.244.3.0/24 dev ptw0", "10.245.3.0/24 dev ptw0"},
			wg:     []string{"n3 192.168.78.3:51819 10.244.3.0/24,10.245.3.0/24"}, plain: []string{"n2: " + PlainNoKey}},
		{name: "without an own block nothing is encrypted (VXLAN needs it too)", local: noBlock, peers: []Peer{n2, n3},
			routes: []string{"10.244.2.0/24 via 192.168.77.2 dev eth0"},
			plain:  []string{"n2: " + PlainNoBlock, "n3: " + PlainNoBlock}},
		{name: "device not up: plain routes, VXLAN for the other subnet", local: noDevice, peers: []Peer{n2, n3},
			routes: []string{"10.244.2.0/24 via 192.168.77.2 dev eth0", "10.244.3.0/24 via 10.244.3.0 dev ptx0 onlink", "10.245.3.0/24 via 10.244.3.0 dev ptx0 onlink"},
			plain:  []string{"n2: " + PlainNoDevice, "n3: " + PlainNoDevice}, vxlan: true},
		{name: "a key seen twice (a cloned node) or our own: only the first by name", local: local, peers: []Peer{
			{Name: "n4", Addr: ip("192.168.77.4"), Blocks: []netip.Prefix{pfx("10.244.4.0/24")}, Key: k2},
			n2,
			{Name: "n5", Addr: ip("192.168.77.5"), Blocks: []netip.Prefix{pfx("10.244.5.0/24")}, Key: k1},
		}, routes: []string{"10.244.2.0/24 dev ptw0", "10.244.4.0/24 via 192.168.77.4 dev eth0", "10.244.5.0/24 via 192.168.77.5 dev eth0"},
			wg: []string{"n2 192.168.77.2:51819 10.244.2.0/24"}, plain: []string{"n4: " + PlainDupKey, "n5: " + PlainDupKey}},
		{name: "overlapping block is a conflict, not a WireGuard allowed IP", local: local, peers: []Peer{n2,
			{Name: "n6", Addr: ip("192.168.77.6"), Blocks: []netip.Prefix{pfx("10.244.2.0/25")}, Key: k3}},
			routes: []string{"10.244.2.0/24 dev ptw0"}, wg: []string{"n2 192.168.77.2:51819 10.244.2.0/24"}},
		{name: "encryption off: keys are ignored", local: off, peers: []Peer{n2, n3},
			routes: []string{"10.244.2.0/24 via 192.168.77.2 dev eth0", "10.244.3.0/24 via 10.244.3.0 dev ptx0 onlink", "10.245.3.0/24 via 10.244.3.0 dev ptx0 onlink"},
			vxlan:  true},
		{name: "another port", local: port, peers: []Peer{n2}, routes: []string{"10.244.2.0/24 dev ptw0"},
			wg: []string{"n2 192.168.77.2:40000 10.244.2.0/24"}},
		{name: "remote clusters enter at the marked gateway: its peer allows their sources (never a cluster block)", local: remote, peers: []Peer{n2, n3gw},
			routes: []string{"10.244.2.0/24 dev ptw0", "10.244.3.0/24 dev ptw0", "10.245.3.0/24 dev ptw0"},
			wg:     []string{"n2 192.168.77.2:51819 10.244.2.0/24", "n3 192.168.78.3:51819 10.244.3.0/24,10.245.3.0/24,10.250.0.0/16"}},
		{name: "none marked: the smallest name is the entry (this node: no peer gets them)", local: remote, peers: []Peer{n2, n3},
			routes: []string{"10.244.2.0/24 dev ptw0", "10.244.3.0/24 dev ptw0", "10.245.3.0/24 dev ptw0"},
			wg:     []string{"n2 192.168.77.2:51819 10.244.2.0/24", "n3 192.168.78.3:51819 10.244.3.0/24,10.245.3.0/24"}},
		{name: "none marked, another node smallest", local: remoteLast, peers: []Peer{n3, n2},
			routes: []string{"10.244.2.0/24 dev ptw0", "10.244.3.0/24 dev ptw0", "10.245.3.0/24 dev ptw0"},
			wg:     []string{"n2 192.168.77.2:51819 10.244.2.0/24,10.250.0.0/16", "n3 192.168.78.3:51819 10.244.3.0/24,10.245.3.0/24"}},
		{name: "this node the marked gateway", local: remoteSelfGW, peers: []Peer{n2, n3},
			routes: []string{"10.244.2.0/24 dev ptw0", "10.244.3.0/24 dev ptw0", "10.245.3.0/24 dev ptw0"},
			wg:     []string{"n2 192.168.77.2:51819 10.244.2.0/24", "n3 192.168.78.3:51819 10.244.3.0/24,10.245.3.0/24"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Compute(tc.local, tc.peers)
			var routes, wgs, plain []string
			for _, r := range p.Routes {
				routes = append(routes, r.String())
			}
			for _, w := range p.WGPeers {
				var ips []string
				for _, a := range w.AllowedIPs {
					ips = append(ips, a.String())
				}
				wgs = append(wgs, fmt.Sprintf("%s %s %s", w.Node, w.Endpoint, strings.Join(ips, ",")))
				if w.Keepalive != 0 {
					t.Errorf("%s keepalive %s: node peers handshake on traffic", w.Node, w.Keepalive)
				}
			}
			for _, pl := range p.Plain {
				plain = append(plain, pl.Node+": "+pl.Reason)
			}
			for _, c := range []struct {
				what      string
				got, want []string
			}{{"routes", routes, tc.routes}, {"wireguard peers", wgs, tc.wg}, {"plain peers", plain, tc.plain}} {
				if strings.Join(c.got, "|") != strings.Join(c.want, "|") {
					t.Errorf("%s %q, want %q", c.what, c.got, c.want)
				}
			}
			if p.VXLAN != tc.vxlan {
				t.Errorf("vxlan %v, want %v", p.VXLAN, tc.vxlan)
			}
		})
	}
}

func TestEncryptOptionErrors(t *testing.T) {
	client := fake.NewSimpleClientset()
	for _, tc := range []struct {
		name string
		e    Encrypt
		want string // "" = accepted
	}{
		{name: "default none", e: Encrypt{}},
		{name: "wireguard", e: Encrypt{Mode: "wireguard"}},
		{name: "none spelled out", e: Encrypt{Mode: " none "}},
		{name: "unknown mode", e: Encrypt{Mode: "ipsec"}, want: `node-encryption "ipsec": accepted values are wireguard and none`},
		{name: "case matters", e: Encrypt{Mode: "WireGuard"}, want: "accepted values"},
		{name: "tunnel port", e: Encrypt{Mode: "wireguard", Port: 51820}, want: "port 51820 is taken"},
		{name: "per-path tunnel port", e: Encrypt{Mode: "wireguard", Port: 51900}, want: "port 51900 is taken"},
		{name: "VXLAN port", e: Encrypt{Mode: "wireguard", Port: 4789}, want: "port 4789 is taken"},
		{name: "not a port", e: Encrypt{Mode: "wireguard", Port: 70000}, want: "want 1..65535"},
		{name: "bad implementation", e: Encrypt{Mode: "wireguard", WGMode: "ebpf"}, want: "WireGuard mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Options{Client: kfake.Kube(client), NodeName: "n1", Encrypt: tc.e})
			_, eerr := NewEdge(EdgeOptions{NodeName: "n1", NodeIP: ip("192.0.2.1"), ClusterCIDR: pfx("10.244.0.0/16"),
				Members: func() []EdgeMember { return nil }, Publish: func(string) error { return nil }, Encrypt: tc.e})
			for _, e := range []error{err, eerr} {
				if tc.want == "" && e != nil {
					t.Fatalf("rejected: %v", e)
				}
				if tc.want != "" && (e == nil || !strings.Contains(e.Error(), tc.want)) {
					t.Fatalf("error %v, want one containing %q", e, tc.want)
				}
			}
		})
	}
}

func TestWGKeyKept(t *testing.T) {
	db, err := store.Open(context.Background(), t.TempDir()+"/k8s-sdwan.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	a, err := LoadOrCreateWGKey(context.Background(), db, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateWGKey(context.Background(), db, time.Now())
	if err != nil || a != b || a == (wgtypes.Key{}) {
		t.Fatalf("second load %v (%v), want the saved %v", b, err, a)
	}
	if v, ok, _ := db.Get(context.Background(), KVWGKey); !ok || !strings.Contains(v, `"privateKey"`) || !strings.Contains(v, `"createdAt"`) {
		t.Fatalf("kv %s = %q", KVWGKey, v)
	}
}

// fakeWG is a WGLink in memory.
type fakeWG struct {
	mu      sync.Mutex
	spec    WGSpec
	up      bool
	peers   map[wgtypes.Key]wg.Peer
	changes int
	removed int
	failing error
	// kicked are the peers ever configured with a persistent keepalive.
	kicked []wgtypes.Key
}

func (f *fakeWG) Ensure(s WGSpec) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing != nil {
		return 0, f.failing
	}
	f.spec, f.up = s, true
	return 1420, nil
}

func (f *fakeWG) Configure(peers []wg.Peer) (wg.Changes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ch wg.Changes
	want := map[wgtypes.Key]wg.Peer{}
	for _, p := range peers {
		want[p.PublicKey] = p
		if p.Keepalive > 0 {
			f.kicked = append(f.kicked, p.PublicKey)
		}
		if old, ok := f.peers[p.PublicKey]; !ok {
			ch.Added = append(ch.Added, p.PublicKey)
		} else if fmt.Sprint(old) != fmt.Sprint(p) {
			ch.Updated = append(ch.Updated, p.PublicKey)
		}
	}
	for k := range f.peers {
		if _, ok := want[k]; !ok {
			ch.Removed = append(ch.Removed, k)
		}
	}
	f.peers = want
	if !ch.Empty() {
		f.changes++
	}
	return ch, nil
}

func (f *fakeWG) State() (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := &wgtypes.Device{Name: WGDevice}
	for k := range f.peers {
		d.Peers = append(d.Peers, wgtypes.Peer{PublicKey: k, LastHandshakeTime: time.Unix(1700000000, 0), ReceiveBytes: 7})
	}
	return d, nil
}

func (f *fakeWG) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.up, f.peers = false, nil
	f.removed++
	return nil
}

func (f *fakeWG) Implementation() string { return "userspace" }
func (f *fakeWG) Close()                 {}

func (f *fakeWG) snapshot() (bool, int, int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.up, len(f.peers), f.changes, f.removed
}

// drained is a recording datapath whose records are thrown away (its channels must not
// fill up: a fast resync applies many plans).
func drained(t *testing.T) *recDatapath {
	dp := newRec()
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case <-dp.plans:
			case <-dp.masq:
			case <-done:
				return
			}
		}
	}()
	return dp
}

func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The controller publishes its key on its Node, peers with the annotation get encrypted
// routes and a WireGuard peer, one without stays plain and is reported; a key appearing
// later moves that peer; turning encryption off removes the device and the annotation.
func TestControllerEncryption(t *testing.T) {
	k2 := key(t).PublicKey()
	n2 := node("n2", "192.168.1.2", "10.244.2.0/24")
	n2.Annotations = map[string]string{AnnotationWGKey: k2.String()}
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", "10.244.1.0/24"), n2, node("n3", "192.168.1.3", "10.244.3.0/24"))
	dp, fw := drained(t), &fakeWG{}
	own := key(t)
	o := Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: t.TempDir() + "/10-patronus.conflist", Datapath: dp,
		Resync: 100 * time.Millisecond, Encrypt: Encrypt{Mode: EncryptionWireGuard, Key: own, Link: fw}}
	c, stop := runCtrl(t, o)
	ctx := context.Background()
	waitFor(t, "key on the Node", func() error {
		n, err := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil || n.Annotations[AnnotationWGKey] != own.PublicKey().String() {
			return fmt.Errorf("annotations %v (%v)", n.Annotations, err)
		}
		return nil
	})
	fw.mu.Lock()
	spec := fw.spec
	fw.mu.Unlock()
	if spec.Addr != ip("10.244.1.0") || spec.Port != WGPort || spec.Underlay != "eth0" || spec.PrivateKey != own {
		t.Fatalf("device spec %+v", spec)
	}
	waitFor(t, "n2 encrypted, n3 plain", func() error {
		st := c.Status()
		if st.Encryption != EncryptionWireGuard || st.WireGuard == nil || st.WireGuard.PublicKey != own.PublicKey().String() || st.WireGuard.MTU != 1420 {
			return fmt.Errorf("status %+v", st)
		}
		if len(st.PeerStates) != 2 || !st.PeerStates[0].Encrypted || st.PeerStates[0].Endpoint != "192.168.1.2:51819" ||
			st.PeerStates[0].LastHandshake.IsZero() || st.PeerStates[1].Encrypted || st.PeerStates[1].Reason != PlainNoKey {
			return fmt.Errorf("peer states %+v", st.PeerStates)
		}
		if got := fmt.Sprint(st.Routes); got != "[10.244.2.0/24 dev ptw0 10.244.3.0/24 via 192.168.1.3 dev eth0]" {
			return fmt.Errorf("routes %s", got)
		}
		return nil
	})
	// Idempotent: resyncs (every 100ms) change no peer.
	_, _, changes, _ := fw.snapshot()
	time.Sleep(500 * time.Millisecond)
	if _, _, again, _ := fw.snapshot(); again != changes {
		t.Fatalf("resyncs with nothing new changed the peers %d times", again-changes)
	}
	// n3 publishes a key: encrypted within a resync.
	k3 := key(t).PublicKey()
	n3, _ := client.CoreV1().Nodes().Get(ctx, "n3", metav1.GetOptions{})
	n3.Annotations = map[string]string{AnnotationWGKey: k3.String()}
	if _, err := client.CoreV1().Nodes().Update(ctx, n3, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n3 encrypted", func() error {
		if _, peers, _, _ := fw.snapshot(); peers != 2 {
			return fmt.Errorf("%d peers", peers)
		}
		if got := fmt.Sprint(c.Status().Routes); got != "[10.244.2.0/24 dev ptw0 10.244.3.0/24 dev ptw0]" {
			return fmt.Errorf("routes %s", got)
		}
		return nil
	})
	// n2 leaves: its peer goes.
	if err := client.CoreV1().Nodes().Delete(ctx, "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n2's peer removed", func() error {
		if _, peers, _, _ := fw.snapshot(); peers != 1 {
			return fmt.Errorf("%d peers", peers)
		}
		return nil
	})
	stop()

	// Restarted with encryption off: plain routes, device removed, key withdrawn.
	o.Encrypt = Encrypt{Link: fw}
	o.Datapath = drained(t)
	c, stop = runCtrl(t, o)
	defer stop()
	waitFor(t, "off", func() error {
		n, _ := client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if _, has := n.Annotations[AnnotationWGKey]; has {
			return fmt.Errorf("annotation still there")
		}
		if up, _, _, removed := fw.snapshot(); up || removed != 1 {
			return fmt.Errorf("device up %v, removed %d times", up, removed)
		}
		st := c.Status()
		if st.Encryption != EncryptionNone || st.WireGuard != nil || len(st.PeerStates) != 0 || fmt.Sprint(st.Routes) != "[10.244.3.0/24 via 192.168.1.3 dev eth0]" {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// Edge mode: the key travels in the signed podblock claim and reaches EdgeMember.Key.
func TestMeshClaimsKey(t *testing.T) {
	pub := key(t).PublicKey().String()
	// Signed by n2 and accepted by a receiver of the cluster: the key survives the wire.
	_, ck, _ := ed25519.GenerateKey(nil)
	id, err := trust.NewIdentity("c1", ck, "n2", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	v, err := trust.NewVerifier(trust.Cluster{ID: "c1", PublicKey: ck.Public().(ed25519.PublicKey), CIDRs: []netip.Prefix{pfx("10.244.0.0/16")}})
	if err != nil {
		t.Fatal(err)
	}
	wire, _, err := announce.NewSigner(id, time.Now).Sign(BlockAnnouncementKey(pfx("10.244.2.0/24"), time.UnixMilli(1000), pub), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	r, err := announce.NewReceiver(announce.ReceiverOptions{Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	a, err := r.Receive(wire)
	if err != nil {
		t.Fatalf("a podblock announcement with a key must be accepted: %v", err)
	}
	b := BlockAnnouncementKey(pfx("10.244.3.0/24"), time.UnixMilli(1000), "")
	b.Origin, b.Cluster = "n3", "c1"
	if b.Tunnel != nil {
		t.Fatal("no key, no tunnel field")
	}
	ms := []mesh.Member{{Name: "n2", Addr: "192.0.2.2:7946", Status: "alive", Cluster: "c1"}, {Name: "n3", Addr: "192.0.2.3:7946", Status: "alive", Cluster: "c1"}}
	got := MeshClaims(ms, []announce.Announcement{a, b}, "c1")
	if len(got) != 2 || got[0].Key != pub || got[1].Key != "" || got[0].Claim != "10.244.2.0/24@1000" {
		t.Fatalf("members %+v", got)
	}
}

// A substitute datapath without a substitute WireGuard link never gets a real device (it
// would be the caller's namespace's): the error is in the status, peers stay plain.
func TestEncryptionNeedsLinkWithSubstituteDatapath(t *testing.T) {
	n2 := node("n2", "192.168.1.2", "10.244.2.0/24")
	n2.Annotations = map[string]string{AnnotationWGKey: key(t).PublicKey().String()}
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", "10.244.1.0/24"), n2)
	c, stop := runCtrl(t, Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: t.TempDir() + "/10-patronus.conflist", Datapath: drained(t),
		Resync: 100 * time.Millisecond, Encrypt: Encrypt{Mode: EncryptionWireGuard, Key: key(t)}})
	defer stop()
	waitFor(t, "device error, plain peer", func() error {
		st := c.Status()
		if st.WireGuard == nil || !strings.Contains(st.WireGuard.Error, "Encrypt.Link") || len(st.PeerStates) != 1 ||
			st.PeerStates[0].Encrypted || st.PeerStates[0].Reason != PlainNoDevice || fmt.Sprint(st.Routes) != "[10.244.2.0/24 via 192.168.1.2 dev eth0]" {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// A key stored by nodenet's own LoadOrCreateWGKey before it moved to dataplane/wg (same
// kv key, same JSON) is read back unchanged: existing nodes keep their key.
func TestWGKeyReadsStoredFormat(t *testing.T) {
	ctx := context.Background()
	db, err := store.Open(ctx, t.TempDir()+"/k8s-sdwan.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const old = `{"privateKey":"BeV3814JvpR9Kxjc0xSEgKQgbTyNG6EwF2G2Q+2XuAI=","createdAt":"2026-11-20T08:15:00Z"}`
	if err := db.Set(ctx, "nodenet/wireguard-key", old); err != nil {
		t.Fatal(err)
	}
	k, err := LoadOrCreateWGKey(ctx, db, time.Now())
	if err != nil || k.String() != "BeV3814JvpR9Kxjc0xSEgKQgbTyNG6EwF2G2Q+2XuAI=" {
		t.Fatalf("key %s (%v), want the stored one", k, err)
	}
	if v, _, _ := db.Get(ctx, "nodenet/wireguard-key"); v != old {
		t.Fatalf("kv rewritten: %q", v)
	}
	if _, ok, _ := db.Get(ctx, "wireguard/key"); ok {
		t.Fatal("the node key must not land in the inter-cluster tunnel's kv key")
	}
}

package nodenet

import (
	"context"
	kfake "github.com/patronus/patronus/kube/kclient/fake"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/store"
)

// recDatapath records what the controller asked for.
type recDatapath struct {
	plans chan Plan
	masq  chan Masquerade
}

func newRec() *recDatapath {
	return &recDatapath{plans: make(chan Plan, 100), masq: make(chan Masquerade, 100)}
}

func (r *recDatapath) Apply(_ Local, p Plan) error { r.plans <- p; return nil }
func (r *recDatapath) SetMasquerade(m Masquerade) error {
	r.masq <- m
	return nil
}
func (r *recDatapath) Close() {}
func (r *recDatapath) LocalLink(netip.Addr) (string, netip.Prefix, error) {
	return "eth0", pfx("192.168.1.0/24"), nil
}

func node(name, addr, podCIDR string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name)}}
	if podCIDR != "" {
		n.Spec.PodCIDRs = []string{podCIDR}
	}
	if addr != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}
	}
	return n
}

func runCtrl(t *testing.T, o Options) (*Controller, func()) {
	t.Helper()
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	select {
	case <-c.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("not ready: %+v", c.Status())
	}
	return c, func() { cancel(); <-done }
}

func TestSeedDefaultsKept(t *testing.T) {
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", ""))
	path := filepath.Join(t.TempDir(), "10-patronus.conflist")
	dp := newRec()
	c, stop := runCtrl(t, Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: path, Datapath: dp})
	defer stop()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("conflist written without a block: %v", err)
	}
	if st := c.Status(); st.Block.IsValid() || st.Source != "" {
		t.Fatalf("status %+v", st)
	}
	if m := <-dp.masq; len(m.Sources) != 0 {
		t.Fatalf("masquerade without a block: %+v", m)
	}
}

func TestNodePodCIDRAndPeers(t *testing.T) {
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", "10.244.1.0/24"), node("n2", "192.168.1.2", "10.244.2.0/24"))
	path := filepath.Join(t.TempDir(), "10-patronus.conflist")
	dp := newRec()
	var announced []announce.Announcement
	c, stop := runCtrl(t, Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: path, Datapath: dp,
		ClusterCIDR: pfx("10.244.0.0/16"), Announce: func(a announce.Announcement) error { announced = append(announced, a); return nil }})
	defer stop()
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"subnet": "10.244.1.0/24"`) || !strings.Contains(string(b), `"gateway": "10.244.1.1"`) {
		t.Fatalf("conflist %s", b)
	}
	if st := c.Status(); st.Block != pfx("10.244.1.0/24") || st.Source != SourceNode {
		t.Fatalf("status %+v", st)
	}
	for p := range dp.plans {
		if len(p.Routes) == 1 && p.Routes[0].String() == "10.244.2.0/24 via 192.168.1.2 dev eth0" {
			break
		}
	}
	m := <-dp.masq
	for m.Sources == nil {
		m = <-dp.masq
	}
	if m.Sources[0] != pfx("10.244.1.0/24") || m.Cluster[0] != pfx("10.244.0.0/16") || m.Chain != DefaultMasqChain || m.Table != DefaultMasqTable {
		t.Fatalf("masquerade %+v", m)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		rec := httptest.NewRecorder()
		c.HTTPHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/nodenet", nil))
		body := rec.Body.String()
		if strings.Contains(body, `"block":"10.244.1.0/24"`) && strings.Contains(body, `"source":"node"`) && strings.Contains(body, `"dst":"10.244.2.0/24"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/v1/nodenet: %s", body)
		}
	}
	if at := c.Status().ClaimedAt; len(announced) != 1 || announced[0].Kind != announce.KindPodBlock || announced[0].Prefixes[0] != pfx("10.244.1.0/24") ||
		at.IsZero() || announced[0].Claimed != at.UnixMilli() {
		t.Fatalf("announced %+v (claimed at %s)", announced, at)
	}
}

func TestLeaseClaimSurvivesRestart(t *testing.T) {
	client := fake.NewSimpleClientset(node("n1", "192.168.1.1", ""))
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	o := Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: filepath.Join(t.TempDir(), "c.conflist"), Datapath: newRec(),
		ClusterCIDR: pfx("10.244.0.0/16"), BlockSize: 26, DB: db}
	c, stop := runCtrl(t, o)
	first := c.Status().Block
	stop()
	if first.Bits() != 26 || !pfx("10.244.0.0/16").Contains(first.Addr()) {
		t.Fatalf("block %s", first)
	}
	v, ok, _ := db.Get(context.Background(), KVBlock)
	if !ok || !strings.Contains(v, first.String()) || !strings.Contains(v, `"source":"lease"`) {
		t.Fatalf("kv %s = %q", KVBlock, v)
	}
	ls, _ := client.CoordinationV1().Leases(DefaultNamespace).List(context.Background(), metav1.ListOptions{})
	if len(ls.Items) != 1 || *ls.Items[0].Spec.HolderIdentity != "n1" || len(ls.Items[0].OwnerReferences) != 1 || ls.Items[0].OwnerReferences[0].Kind != "Node" {
		t.Fatalf("leases %+v", ls.Items)
	}
	c, stop = runCtrl(t, o)
	defer stop()
	if got := c.Status().Block; got != first {
		t.Fatalf("after restart %s, want %s", got, first)
	}
	if ls, _ := client.CoordinationV1().Leases(DefaultNamespace).List(context.Background(), metav1.ListOptions{}); len(ls.Items) != 1 {
		t.Fatalf("restart made another claim: %d leases", len(ls.Items))
	}
}

func TestNewRejects(t *testing.T) {
	client := fake.NewSimpleClientset()
	for _, o := range []Options{
		{NodeName: "n"},
		{Client: kfake.Kube(client)},
		{Client: kfake.Kube(client), NodeName: "n", ClusterCIDR: pfx("10.244.0.0/16"), BlockSize: 8},
		{Client: kfake.Kube(client), NodeName: "n", BaseConfList: []byte(`{"plugins":[]}`)},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("accepted %+v", o)
		}
	}
}

// TestMasqueradeExemptions: remote clusters' pod CIDRs keep pod sources (their WireGuard
// peers drop anything else), and turning masquerade off removes the chain (the datapath is
// asked for a chain with no sources) instead of leaving an earlier run's in place.
func TestMasqueradeExemptions(t *testing.T) {
	for _, tc := range []struct {
		name        string
		noMasq      bool
		wantSources int
		wantCluster []netip.Prefix
	}{
		{name: "remote cidrs kept", wantSources: 1, wantCluster: []netip.Prefix{pfx("10.244.0.0/16"), pfx("10.248.0.0/16"), pfx("10.252.0.0/16")}},
		{name: "off removes", noMasq: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewSimpleClientset(node("n1", "192.168.1.1", "10.244.1.0/24"))
			dp := newRec()
			_, stop := runCtrl(t, Options{Client: kfake.Kube(client), NodeName: "n1", ConfListPath: filepath.Join(t.TempDir(), "c.conflist"),
				Datapath: dp, ClusterCIDR: pfx("10.244.0.0/16"), NoMasquerade: tc.noMasq,
				KeepSourceTo: []netip.Prefix{pfx("10.248.0.0/16"), pfx("10.252.0.0/16")}})
			defer stop()
			m := <-dp.masq
			for tc.wantSources > 0 && m.Sources == nil { // before the block was known
				m = <-dp.masq
			}
			if len(m.Sources) != tc.wantSources || !slices.Equal(m.Cluster, tc.wantCluster) || m.Chain != DefaultMasqChain {
				t.Fatalf("masquerade %+v, want %d sources, never to %v", m, tc.wantSources, tc.wantCluster)
			}
		})
	}
}

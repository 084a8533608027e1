package nodenet

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/patronus/patronus/nodenet/alloc"
	"github.com/patronus/patronus/store"
)

// An edge node whose saved claim turns out newer than another node's claim of the same
// block re-claims and reports the pods of the lost block (status and
// patronus_nodenet_lost_pods); a lost pod deleted since is no longer reported.
func TestEdgeLostPodsFollowDatabase(t *testing.T) {
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "k8s-sdwan.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	lost := pfx("10.244.9.0/24")
	for i, name := range []string{"web", "db"} {
		p := store.Pod{ContainerID: name + "-c", IfName: "eth0", Namespace: "default", Name: name}
		p.IPs = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, 9, byte(10 + i)}), 24)}
		if err := db.PutPod(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	other := store.Pod{ContainerID: "other-c", IfName: "eth0", Namespace: "default", Name: "other",
		IPs: []netip.Prefix{pfx("10.244.1.5/24")}}
	if err := db.PutPod(ctx, other); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	e, err := NewEdge(EdgeOptions{NodeName: "n1", NodeIP: ip("192.168.1.1"), ClusterCIDR: pfx("10.244.0.0/16"), DB: db,
		ConfListPath: filepath.Join(t.TempDir(), "10-patronus.conflist"), Datapath: nopDP{}, Settle: -1,
		Members: func() []EdgeMember {
			return []EdgeMember{{Name: "n2", Addr: ip("192.168.1.2"), Claim: FormatClaim(alloc.Claim{Block: lost, At: now.Add(-time.Hour)})}}
		},
		Publish: func(string) error { return nil }, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	e.claimer.Restore(alloc.Claim{Block: lost, Node: "n1", At: now.Add(-time.Minute)}) // newer than n2's
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(LostPodsGauge(e.Status))
	check := func(want ...string) {
		t.Helper()
		st := e.Status()
		if st.Block == lost || !st.Block.IsValid() {
			t.Fatalf("block %s: want a new one, not %s", st.Block, lost)
		}
		var got []string
		for _, l := range st.Lost {
			if l.Block != lost {
				t.Fatalf("lost pod %+v: block, want %s", l, lost)
			}
			got = append(got, l.Namespace+"/"+l.Name)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("lost pods %v, want %v", got, want)
		}
		if n, err := testutil.GatherAndCount(reg, MetricLostPods); err != nil || n != 1 {
			t.Fatalf("%s series %d: %v", MetricLostPods, n, err)
		}
		mfs, _ := reg.Gather()
		if v := mfs[0].GetMetric()[0].GetGauge().GetValue(); v != float64(len(want)) {
			t.Fatalf("%s = %v, want %d", MetricLostPods, v, len(want))
		}
	}
	wire := ""
	if err := e.reconcile(ctx, nopDP{}, &wire); err != nil {
		t.Fatal(err)
	}
	check("default/db", "default/web")
	if err := db.DeletePod(ctx, "web-c", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := e.reconcile(ctx, nopDP{}, &wire); err != nil {
		t.Fatal(err)
	}
	check("default/db")
	if err := db.DeletePod(ctx, "db-c", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := e.reconcile(ctx, nopDP{}, &wire); err != nil {
		t.Fatal(err)
	}
	check()
}

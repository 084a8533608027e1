package multinode

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/manifests"
	"github.com/patronus/patronus/nodenet"
	"github.com/patronus/patronus/nodenet/alloc"
	"github.com/patronus/patronus/store"
)

// nopDatapath lets claim tests run many controllers without a namespace each.
type nopDatapath struct{}

func (nopDatapath) Apply(nodenet.Local, nodenet.Plan) error { return nil }
func (nopDatapath) SetMasquerade(nodenet.Masquerade) error  { return nil }
func (nopDatapath) Close()                                  {}
func (nopDatapath) LocalLink(netip.Addr) (string, netip.Prefix, error) {
	return "eth0", netip.MustParsePrefix("192.168.77.0/24"), nil
}

func createNodes(t *testing.T, cluster *k8senv.Cluster, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := cluster.Client().CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cluster.Client().CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
}

func claimController(t *testing.T, cluster *k8senv.Cluster, ns, name string, cidr netip.Prefix, db *store.DB) *nodenet.Controller {
	t.Helper()
	c, err := nodenet.New(nodenet.Options{
		Client: cluster.AgentClient(), NodeName: name, Namespace: ns, ClusterCIDR: cidr, BlockSize: 24, DB: db,
		ConfListPath: filepath.Join(t.TempDir(), manifests.ConfListName), Datapath: nopDatapath{},
		Resync: time.Second, Logger: testLogger(t, name),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// concurrentClaims: 16 agents start at once claiming /24s out of a /20 (exactly 16
// blocks, so the last claims must collide and retry), a 17th finds none left.
func concurrentClaims(t *testing.T, cluster *k8senv.Cluster) {
	const ns, n = "nn-claims", 16
	if _, err := cluster.Client().CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cidr := netip.MustParsePrefix("10.250.0.0/20")
	var names []string
	for i := range n + 1 {
		names = append(names, fmt.Sprintf("claimer-%02d", i))
	}
	createNodes(t, cluster, names...)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	ctrls := make([]*nodenet.Controller, n)
	for i := range n {
		ctrls[i] = claimController(t, cluster, ns, names[i], cidr, nil)
	}
	start := make(chan struct{})
	for _, c := range ctrls {
		wg.Go(func() { <-start; c.Run(ctx) })
	}
	close(start)
	for i, c := range ctrls {
		select {
		case <-c.Ready():
		case <-time.After(60 * time.Second):
			t.Fatalf("%s has no block: %+v", names[i], c.Status())
		}
	}
	got := map[netip.Prefix]string{}
	for i, c := range ctrls {
		b := c.Status().Block
		if o, dup := got[b]; dup {
			t.Fatalf("%s and %s both hold %s", o, names[i], b)
		}
		if !cidr.Contains(b.Addr()) || b.Bits() != 24 {
			t.Fatalf("%s holds %s, not a /24 of %s", names[i], b, cidr)
		}
		got[b] = names[i]
	}
	ls, err := cluster.Client().CoordinationV1().Leases(ns).List(context.Background(), metav1.ListOptions{LabelSelector: nodenet.LeaseSelector})
	if err != nil {
		t.Fatal(err)
	}
	if len(ls.Items) != n {
		t.Fatalf("%d leases for %d claimers", len(ls.Items), n)
	}
	for _, l := range ls.Items {
		b, _ := alloc.ParseLeaseName(l.Name)
		if got[b] != *l.Spec.HolderIdentity || l.Annotations[nodenet.AnnotationBlock] != b.String() {
			t.Fatalf("lease %s held by %s, controller view %s", l.Name, *l.Spec.HolderIdentity, got[b])
		}
	}
	// The 17th: nothing left, says so, claims nothing.
	last := claimController(t, cluster, ns, names[n], cidr, nil)
	wg.Go(func() { last.Run(ctx) })
	eventually(t, 20*time.Second, "17th claimer reports exhaustion", func() error {
		if s := last.Status(); !strings.Contains(s.LastError, "no free /24 block") || s.Block.IsValid() {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
}

// lostBlock: a node's saved block is taken by another node while its agent is down; on
// restart it claims a new block and reports the pods still holding old addresses (status
// and a Warning Event on its Node).
func lostBlock(t *testing.T, cluster *k8senv.Cluster) {
	const ns = "nn-lost"
	c := cluster.Client()
	if _, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createNodes(t, cluster, "lost-a")
	db, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cidr := netip.MustParsePrefix("10.251.0.0/16")
	run := func() (*nodenet.Controller, context.CancelFunc, chan struct{}) {
		ctrl := claimController(t, cluster, ns, "lost-a", cidr, db)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { ctrl.Run(ctx); close(done) }()
		select {
		case <-ctrl.Ready():
		case <-time.After(30 * time.Second):
			t.Fatalf("no block: %+v", ctrl.Status())
		}
		return ctrl, cancel, done
	}
	ctrl, cancel, done := run()
	old := ctrl.Status().Block
	cancel()
	<-done
	// A pod of this node holds an address in the block.
	podIP := netip.PrefixFrom(alloc.Gateway(old).Next(), 24)
	if err := db.PutPod(context.Background(), store.Pod{ContainerID: "c1", IfName: "eth0", Namespace: "default", Name: "victim",
		IPs: []netip.Prefix{podIP}, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	// While it is down, its Lease is deleted and another node claims the block.
	leases := c.CoordinationV1().Leases(ns)
	if err := leases.Delete(context.Background(), alloc.LeaseName(old), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	thief := "lost-b"
	if _, err := leases.Create(context.Background(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: alloc.LeaseName(old), Labels: map[string]string{nodenet.LabelComponent: nodenet.ComponentPodBlock},
			Annotations: map[string]string{nodenet.AnnotationBlock: old.String()}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &thief},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctrl, cancel, done = run()
	defer func() { cancel(); <-done }()
	st := ctrl.Status()
	if st.Block == old || !st.Block.IsValid() {
		t.Fatalf("still on lost block %s", st.Block)
	}
	if len(st.Lost) != 1 || st.Lost[0].Name != "victim" || st.Lost[0].Block != old || st.Lost[0].IPs[0] != podIP {
		t.Fatalf("lost pods %+v", st.Lost)
	}
	eventually(t, 10*time.Second, "PodBlockLost event", func() error {
		evs, err := c.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "reason=" + nodenet.EventReasonBlockLost})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == "lost-a" && strings.Contains(e.Message, "default/victim") && strings.Contains(e.Message, old.String()) {
				return nil
			}
		}
		return fmt.Errorf("events %d", len(evs.Items))
	})
}

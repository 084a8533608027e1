package nodenet

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	kfake "github.com/patronus/patronus/kube/kclient/fake"

	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/nodenet/alloc"
)

var relayT0 = time.UnixMilli(1_700_000_000_000)

func relayNode(name string, gateway bool, podCIDR string) *corev1.Node {
	n := node(name, "", podCIDR)
	n.CreationTimestamp = metav1.NewTime(relayT0)
	if gateway {
		n.Labels = map[string]string{GatewayLabel: "true"}
	}
	return n
}

func relayLease(holder, block string, acquired time.Duration) *coordinationv1.Lease {
	b := pfx(block)
	at := metav1.NewMicroTime(relayT0.Add(acquired))
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: alloc.LeaseName(b), CreationTimestamp: metav1.NewTime(relayT0),
			Annotations: map[string]string{AnnotationBlock: b.String()}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, AcquireTime: &at},
	}
}

// A marked gateway relays the API's claims of every other unmarked, live Node whose block
// lies in the cluster CIDR; anyone else relays nothing.
func TestRelayClaims(t *testing.T) {
	deleting := relayNode("n4", false, "")
	deleting.DeletionTimestamp = &metav1.Time{Time: relayT0}
	leaseGone := relayLease("n6", "10.244.6.0/24", 0)
	leaseGone.DeletionTimestamp = &metav1.Time{Time: relayT0}
	nodes := []*corev1.Node{
		relayNode("gw", true, ""), relayNode("gw2", true, ""),
		relayNode("n1", false, ""),                // a Lease
		relayNode("n2", false, "10.244.200.0/24"), // spec.podCIDR (wins over its Lease)
		relayNode("n3", false, ""),                // no block yet
		deleting,                                  // being deleted
		relayNode("n5", false, ""),                // its Lease is outside the cluster CIDR
		relayNode("n6", false, ""),                // its Lease is being deleted
		relayNode("n7", false, ""),                // two Leases: the oldest
	}
	leases := []*coordinationv1.Lease{
		relayLease("n1", "10.244.1.0/24", time.Second),
		relayLease("n2", "10.244.2.0/24", 0),
		relayLease("gw2", "10.244.3.0/24", 0), // a gateway announces itself
		relayLease("n4", "10.244.4.0/24", 0),
		relayLease("n5", "10.9.5.0/24", 0),
		leaseGone,
		relayLease("n7", "10.244.72.0/24", 2*time.Second),
		relayLease("n7", "10.244.71.0/24", time.Second),
		relayLease("gone", "10.244.8.0/24", 0), // no Node
	}
	cidr := pfx("10.244.0.0/16")
	claim := func(n, b string, d time.Duration) alloc.Claim {
		return alloc.Claim{Block: pfx(b), Node: n, At: relayT0.Add(d)}
	}
	gwWant := []alloc.Claim{claim("n1", "10.244.1.0/24", time.Second), claim("n2", "10.244.200.0/24", 0), claim("n7", "10.244.71.0/24", time.Second)}
	unmarked := []*corev1.Node{relayNode("gw", false, ""), relayNode("n1", false, "")}
	for _, tc := range []struct {
		name    string
		self    string
		nodes   []*corev1.Node
		cluster netip.Prefix
		want    []alloc.Claim
	}{
		{"gateway", "gw", nodes, cidr, gwWant},
		{"another gateway relays the same", "gw2", nodes, cidr, gwWant},
		{"not a gateway", "n1", nodes, cidr, nil},
		{"no Node marked: every node announces itself", "gw", unmarked, cidr, nil},
		{"no cluster-cidr: nothing receivers would accept", "gw", nodes, netip.Prefix{}, nil},
		{"own Node unknown", "nobody", nodes, cidr, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := relayClaims(tc.self, tc.nodes, leases, tc.cluster)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("relayed %v\nwant    %v", got, tc.want)
			}
		})
	}
	a := RelayAnnouncement(claim("n1", "10.244.1.0/24", time.Second))
	if a.Kind != announce.KindPodBlock || a.Node != "n1" || a.Prefixes[0] != pfx("10.244.1.0/24") || a.Claimed != relayT0.Add(time.Second).UnixMilli() {
		t.Fatalf("relay announcement %+v", a)
	}
	if w := RelayWithdrawal("n1"); !w.Withdraw || w.Node != "n1" || w.Kind != announce.KindPodBlock {
		t.Fatalf("relay withdrawal %+v", w)
	}
}

func podBlockAnn(origin, cluster, node, block string, at int64) announce.Announcement {
	return announce.Announcement{Kind: announce.KindPodBlock, Origin: origin, Cluster: cluster, Node: node,
		Prefixes: []netip.Prefix{pfx(block)}, Claimed: at}
}

// Readers key claims by node: several gateways announcing one node's claim count once,
// a node's own claim wins over claims made on its behalf.
func TestAnnouncedClaims(t *testing.T) {
	withdrawn := podBlockAnn("gw1", "c1", "n5", "10.244.5.0/24", 1)
	withdrawn.Withdraw = true
	anns := []announce.Announcement{
		podBlockAnn("gw1", "c1", "", "10.244.1.0/24", 10),   // gw1's own
		podBlockAnn("gw1", "c1", "n2", "10.244.2.0/24", 20), // n2 by two gateways, same claim
		podBlockAnn("gw2", "c1", "n2", "10.244.2.0/24", 20),
		podBlockAnn("gw2", "c1", "n3", "10.244.3.0/24", 30), // n3: gw2 saw the re-claim, gw1 not yet
		podBlockAnn("gw1", "c1", "n3", "10.244.33.0/24", 5),
		podBlockAnn("gw2", "c1", "gw1", "10.244.9.0/24", 99), // on gw1's behalf: its own claim wins
		podBlockAnn("n4", "c1", "", "10.244.4.0/24", 40),     // n4 runs the mesh itself
		podBlockAnn("gw1", "c1", "n4", "10.244.44.0/24", 41),
		withdrawn,
		podBlockAnn("x1", "c2", "n6", "10.9.0.0/24", 1), // another cluster
		{Kind: announce.KindPrefix, Origin: "gw1", Cluster: "c1", Prefixes: []netip.Prefix{pfx("10.244.0.0/16")}},
	}
	claim := func(n, b string, at int64) alloc.Claim {
		return alloc.Claim{Block: pfx(b), Node: n, At: time.UnixMilli(at)}
	}
	want := map[string]alloc.Claim{
		"gw1": claim("gw1", "10.244.1.0/24", 10),
		"n2":  claim("n2", "10.244.2.0/24", 20),
		"n3":  claim("n3", "10.244.3.0/24", 30),
		"n4":  claim("n4", "10.244.4.0/24", 40),
	}
	if got := AnnouncedClaims(anns, "c1"); !maps.Equal(got, want) {
		t.Fatalf("claims %v\nwant   %v", got, want)
	}
	// Ties (same claim time) go to the lowest origin, whatever the order.
	tie := []announce.Announcement{podBlockAnn("gw2", "c1", "n2", "10.244.22.0/24", 20), podBlockAnn("gw1", "c1", "n2", "10.244.2.0/24", 20)}
	for range 2 {
		if got := AnnouncedClaims(tie, ""); got["n2"].Block != pfx("10.244.2.0/24") {
			t.Fatalf("tie resolved to %v", got["n2"])
		}
		tie[0], tie[1] = tie[1], tie[0]
	}
}

// Edge mode resolves conflicts between the claimants' own signed claims only: a claim a
// gateway made on another node's behalf, even an older one of the same block, neither
// gives that node a claim in the edge view nor makes the claimant lose its block.
func TestMeshClaimsIgnoreOnBehalf(t *testing.T) {
	ms := []mesh.Member{
		{Name: "a", Addr: "192.168.1.1:7946", Status: "alive", Cluster: "c1"},
		{Name: "gw", Addr: "192.168.1.2:7946", Status: "alive", Cluster: "c1"},
		{Name: "z", Addr: "192.168.1.3:7946", Status: "alive", Cluster: "c1"},
	}
	anns := []announce.Announcement{
		podBlockAnn("z", "c1", "", "10.244.1.0/24", 2000),
		podBlockAnn("gw", "c1", "a", "10.244.1.0/24", 1000), // older claim of z's block, in a's name
		podBlockAnn("gw", "c1", "z", "10.244.9.0/24", 1),    // another block in z's name
	}
	view := map[string]string{}
	var seen []alloc.Claim
	for _, m := range MeshClaims(ms, anns, "c1") {
		view[m.Name] = m.Claim
		if m.Claim != "" && m.Name != "z" {
			c, err := ParseClaim(m.Name, m.Claim)
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, c)
		}
	}
	if want := map[string]string{"a": "", "gw": "", "z": "10.244.1.0/24@2000"}; !maps.Equal(view, want) {
		t.Fatalf("edge view %v, want %v", view, want)
	}
	step := func(seen []alloc.Claim) (alloc.Claim, netip.Prefix) {
		e := &EdgeClaimer{Node: "z", Cluster: pfx("10.244.0.0/16"), Bits: 24, Now: func() time.Time { return time.UnixMilli(3000) }}
		e.Restore(alloc.Claim{Block: pfx("10.244.1.0/24"), Node: "z", At: time.UnixMilli(2000)})
		own, lost, err := e.Step(seen)
		if err != nil {
			t.Fatal(err)
		}
		return own, lost
	}
	if own, lost := step(seen); own.Block != pfx("10.244.1.0/24") || lost.IsValid() {
		t.Fatalf("z resolved to %v (lost %v), want to keep 10.244.1.0/24", own, lost)
	}
	// The same resolution fed the on-behalf claim as if it were a's own: z would lose
	// (what the edge view must not let happen).
	if _, lost := step([]alloc.Claim{{Block: pfx("10.244.1.0/24"), Node: "a", At: time.UnixMilli(1000)}}); lost != pfx("10.244.1.0/24") {
		t.Fatalf("control: z did not lose to an older claim (lost %v)", lost)
	}
}

// The controller keeps RelayClaims following the API: a marked gateway lists the Lease
// claim of an unmarked node, and drops it when the Lease goes.
func TestControllerRelayClaims(t *testing.T) {
	gw := relayNode("gw", true, "10.244.1.0/24")
	gw.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.1.1"}}
	l := relayLease("n2", "10.244.2.0/24", time.Second)
	l.Namespace = DefaultNamespace
	l.Labels = map[string]string{LabelComponent: ComponentPodBlock}
	client := fake.NewSimpleClientset(gw, relayNode("n2", false, ""), l)
	c, stop := runCtrl(t, Options{Client: kfake.Kube(client), NodeName: "gw", ConfListPath: filepath.Join(t.TempDir(), "c.conflist"),
		Datapath: newRec(), ClusterCIDR: pfx("10.244.0.0/16"), Resync: time.Hour})
	defer stop()
	wait := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			got := fmt.Sprint(c.RelayClaims())
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("relay claims %s, want %s", got, want)
			}
		}
	}
	wait(fmt.Sprint([]alloc.Claim{{Block: pfx("10.244.2.0/24"), Node: "n2", At: relayT0.Add(time.Second)}}))
	if err := client.CoordinationV1().Leases(DefaultNamespace).Delete(context.Background(), l.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("[]")
}

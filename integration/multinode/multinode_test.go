// Package multinode tests pod networking across the nodes of one cluster (package
// nodenet) with real namespaces, a real API server and the real CNI plugin.
package multinode

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/nodenet"
)

type tlogWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *tlogWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func testLogger(t *testing.T, node string) *slog.Logger {
	w := &tlogWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", node)
}

func TestMultiNode(t *testing.T) {
	requireRoot(t)
	if _, err := os.Stat("/usr/bin/ping"); err != nil {
		if _, err := os.Stat("/bin/ping"); err != nil {
			t.Skip("needs ping (apt-get install iputils-ping)")
		}
	}
	cluster := k8senv.Start(t)
	pluginDir(t)
	t.Run("NodePodCIDRs", func(t *testing.T) { podNetwork(t, cluster, "kube-system", true) })
	t.Run("LeaseBlocks", func(t *testing.T) { podNetwork(t, cluster, "nn-lease", false) })
	t.Run("ConcurrentClaims", func(t *testing.T) { concurrentClaims(t, cluster) })
	t.Run("LostBlock", func(t *testing.T) { lostBlock(t, cluster) })
}

// podNetwork: three nodes on one L2 segment, pods on each, full reachability; a fourth
// node on another subnet (VXLAN) joins and leaves; routes lost by the kernel come back.
func podNetwork(t *testing.T, cluster *k8senv.Cluster, leaseNS string, withPodCIDRs bool) {
	l := newLab(t, cluster, leaseNS)
	prefix := map[bool]string{true: "c", false: "l"}[withPodCIDRs]
	cidrFor := func(i int) string {
		if withPodCIDRs {
			return fmt.Sprintf("10.244.%d.0/24", 100+i)
		}
		return ""
	}
	other := netip.MustParsePrefix("192.168.78.0/24")
	var nodes []*node
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, l.addNode(fmt.Sprintf("%s-node-%d", prefix, i), netip.MustParseAddr(fmt.Sprintf("192.168.77.%d", 10+i)), cidrFor(i), other))
	}
	blocks := map[netip.Prefix]string{}
	for i, n := range nodes {
		st := n.ctrl.Status()
		if withPodCIDRs && (st.Block.String() != cidrFor(i+1) || st.Source != nodenet.SourceNode) {
			t.Fatalf("%s: block %v from %q, want %s from the Node", n.name, st.Block, st.Source, cidrFor(i+1))
		}
		if !withPodCIDRs && (st.Source != nodenet.SourceLease || !l.cidr.Contains(st.Block.Addr()) || st.Block.Bits() != 24) {
			t.Fatalf("%s: block %v from %q, want a /24 Lease in %s", n.name, st.Block, st.Source, l.cidr)
		}
		if o, dup := blocks[st.Block]; dup {
			t.Fatalf("%s and %s both have block %s", o, n.name, st.Block)
		}
		blocks[st.Block] = n.name
		b, err := os.ReadFile(n.confList)
		if err != nil || !strings.Contains(string(b), `"subnet": "`+st.Block.String()+`"`) {
			t.Fatalf("%s conflist lacks its block %s: %v\n%s", n.name, st.Block, err, b)
		}
	}
	if !withPodCIDRs {
		ls, err := l.client.CoordinationV1().Leases(leaseNS).List(context.Background(), metav1.ListOptions{LabelSelector: nodenet.LeaseSelector})
		if err != nil || len(ls.Items) != 3 {
			t.Fatalf("block leases: %v %d", err, len(ls.Items))
		}
	}

	// Routes to the two other nodes' blocks, direct via their underlay address.
	for _, n := range nodes {
		eventually(t, 10*time.Second, n.name+" routes", func() error {
			rs := ownedRoutes(t, n)
			for _, m := range nodes {
				if m == n {
					continue
				}
				b := m.ctrl.Status().Block.String()
				if want := "via " + m.addr.String() + " dev eth0"; rs[b] != want {
					return fmt.Errorf("route to %s = %q, want %q (all %v)", b, rs[b], want, rs)
				}
			}
			if len(rs) != len(nodes)-1 {
				return fmt.Errorf("routes %v", rs)
			}
			return nil
		})
	}

	var pods []*pod
	for _, n := range nodes {
		for j := range 2 {
			pods = append(pods, l.addPod(n, fmt.Sprintf("%s-p%d", n.name, j)))
		}
	}
	seen := map[netip.Addr]string{}
	for _, n := range nodes {
		for _, p := range n.pods {
			if o, dup := seen[p.ip]; dup {
				t.Fatalf("duplicate pod IP %s: %s and %s", p.ip, o, p.name)
			}
			seen[p.ip] = p.name
			if !n.ctrl.Status().Block.Contains(p.ip) {
				t.Fatalf("pod %s got %s outside its node's block %s", p.name, p.ip, n.ctrl.Status().Block)
			}
			serveTCP(t, p.netns, p.ip, 8080)
		}
	}
	meshCheck(t, pods)

	// Masquerade: pod → another node's underlay address leaves the cluster CIDR, so the
	// peer sees the source node's address.
	serveTCP(t, nodes[1].netns, nodes[1].addr, 9090)
	src, err := dialTCP(nodes[0].pods[0].netns, nodes[1].addr, 9090)
	if err != nil || src != nodes[0].addr.String() {
		t.Fatalf("pod → node %s: seen from %q (%v), want masqueraded to %s", nodes[1].addr, src, err, nodes[0].addr)
	}

	// A route the kernel lost comes back on the next resync.
	h := handleIn(t, nodes[0].netns)
	victim := nodes[1].ctrl.Status().Block
	if err := h.RouteDel(&netlink.Route{Dst: prefixNet(victim), Protocol: nodenet.RouteProtocol}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "lost route re-added", func() error {
		if _, ok := ownedRoutes(t, nodes[0])[victim.String()]; !ok {
			return errNotYet
		}
		return nil
	})

	// A fourth node joins on another subnet: reached through VXLAN (ptx0).
	n4 := l.addNode(prefix+"-node-4", netip.MustParseAddr("192.168.78.14"), cidrFor(4), netip.MustParsePrefix("192.168.77.0/24"))
	b4 := n4.ctrl.Status().Block
	if _, dup := blocks[b4]; dup || !b4.IsValid() {
		t.Fatalf("node 4 block %v overlaps or is missing", b4)
	}
	for _, n := range nodes {
		eventually(t, 10*time.Second, n.name+" route to node 4", func() error {
			if got, want := ownedRoutes(t, n)[b4.String()], "via "+b4.Addr().String()+" dev "+nodenet.VXLANDevice; got != want {
				return fmt.Errorf("route %q, want %q", got, want)
			}
			return nil
		})
	}
	eventually(t, 10*time.Second, "node 4 routes", func() error {
		if rs := ownedRoutes(t, n4); len(rs) != 3 {
			return fmt.Errorf("routes %v", rs)
		}
		return nil
	})
	// Idempotent: two more resyncs neither re-create ptx0 nor change the routes.
	ptx, err := handleIn(t, nodes[0].netns).LinkByName(nodenet.VXLANDevice)
	if err != nil {
		t.Fatalf("no %s on %s: %v", nodenet.VXLANDevice, nodes[0].name, err)
	}
	before := ownedRoutes(t, nodes[0])
	nsh, err := netns.GetFromName(nodes[0].netns)
	if err != nil {
		t.Fatal(err)
	}
	updates, stopWatch := make(chan netlink.RouteUpdate, 100), make(chan struct{})
	if err := netlink.RouteSubscribeAt(nsh, updates, stopWatch); err != nil {
		t.Fatal(err)
	}
	nsh.Close()
	time.Sleep(2500 * time.Millisecond)
	close(stopWatch)
	for len(updates) > 0 {
		if u := <-updates; u.Protocol == nodenet.RouteProtocol {
			t.Fatalf("a resync with nothing to change touched route %v (type %d)", u.Dst, u.Type)
		}
	}
	if again, err := handleIn(t, nodes[0].netns).LinkByName(nodenet.VXLANDevice); err != nil || again.Attrs().Index != ptx.Attrs().Index {
		t.Fatalf("%s re-created by a resync (%v)", nodenet.VXLANDevice, err)
	}
	if after := ownedRoutes(t, nodes[0]); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("routes changed by a resync: %v → %v", before, after)
	}
	if fdb := fdbEntries(t, nodes[0]); len(fdb) != 1 || fdb[0] != "0e:70:c0:a8:4e:0e dst 192.168.78.14" {
		t.Fatalf("%s fdb %v", nodes[0].name, fdb)
	}
	p4 := l.addPod(n4, prefix+"-node-4-p0")
	if o, dup := seen[p4.ip]; dup {
		t.Fatalf("duplicate pod IP %s (%s)", p4.ip, o)
	}
	serveTCP(t, p4.netns, p4.ip, 8080)
	meshCheck(t, append([]*pod{p4}, pods[0], pods[2], pods[5]))

	// Node 4 leaves: its controller stops, its Node is deleted; routes go everywhere and
	// (Lease mode) its block Lease is released by the agents that saw the deletion.
	l.stop(n4)
	if err := l.client.CoreV1().Nodes().Delete(context.Background(), n4.name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		eventually(t, 10*time.Second, n.name+" route to node 4 removed", func() error {
			if r, ok := ownedRoutes(t, n)[b4.String()]; ok {
				return fmt.Errorf("still %s %s", b4, r)
			}
			return nil
		})
	}
	eventually(t, 10*time.Second, "node 4 fdb entry removed", func() error {
		if fdb := fdbEntries(t, nodes[0]); len(fdb) != 0 {
			return fmt.Errorf("fdb %v", fdb)
		}
		return nil
	})
	if !withPodCIDRs {
		eventually(t, 10*time.Second, "node 4 lease released", func() error {
			ls, err := l.client.CoordinationV1().Leases(leaseNS).List(context.Background(), metav1.ListOptions{LabelSelector: nodenet.LeaseSelector})
			if err != nil {
				return err
			}
			if len(ls.Items) != 3 {
				return fmt.Errorf("%d leases", len(ls.Items))
			}
			return nil
		})
		// A restarted agent keeps its block (node database + its Lease).
		before := nodes[0].ctrl.Status().Block
		l.stop(nodes[0])
		l.start(nodes[0])
		if got := nodes[0].ctrl.Status().Block; got != before {
			t.Fatalf("block after restart %s, want %s", got, before)
		}
	}
	meshCheck(t, pods[:3])
}

// meshCheck: every pod reaches every other pod by ICMP and TCP, and the server sees the
// client pod's own address (no masquerade between pods).
func meshCheck(t *testing.T, pods []*pod) {
	t.Helper()
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			if err := ping(a.netns, b.ip); err != nil {
				t.Errorf("%s → %s: %v", a.name, b.name, err)
			}
			src, err := dialTCP(a.netns, b.ip, 8080)
			if err != nil || src != a.ip.String() {
				t.Errorf("%s → %s TCP: seen from %q (%v), want %s", a.name, b.name, src, err, a.ip)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

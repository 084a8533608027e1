package multinode

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/patronus/patronus/nodenet"
)

// gossip is an in-memory stand-in for the mesh's member view: every node sees the
// members (address + claim) on its own side of a partition. The underlay itself stays
// connected; what the partition cuts is the exchange of claims.
type gossip struct {
	mu     sync.Mutex
	addrs  map[string]netip.Addr
	claims map[string]string
	side   map[string]int
	ctrls  map[string]*nodenet.EdgeController
}

func newGossip() *gossip {
	return &gossip{addrs: map[string]netip.Addr{}, claims: map[string]string{}, side: map[string]int{}, ctrls: map[string]*nodenet.EdgeController{}}
}

func (g *gossip) view(self string) []nodenet.EdgeMember {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []nodenet.EdgeMember
	for name, a := range g.addrs {
		if g.side[name] == g.side[self] {
			out = append(out, nodenet.EdgeMember{Name: name, Addr: a, Claim: g.claims[name]})
		}
	}
	return out
}

func (g *gossip) publish(self, claim string) {
	g.mu.Lock()
	g.claims[self] = claim
	g.mu.Unlock()
	g.kick()
}

// kick makes every controller re-read its view (a member-update event).
func (g *gossip) kick() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.ctrls {
		c.Trigger()
	}
}

func (g *gossip) setSides(sides map[string]int) {
	g.mu.Lock()
	for n, s := range sides {
		g.side[n] = s
	}
	g.mu.Unlock()
	g.kick()
}

type edgeNode struct {
	*node
	ctrl *nodenet.EdgeController
}

func (l *lab) addEdgeNode(g *gossip, name string, addr netip.Addr, side int) *edgeNode {
	t := l.t
	t.Helper()
	n := l.makeNode(name, addr)
	g.mu.Lock()
	g.addrs[name], g.side[name] = addr, side
	g.mu.Unlock()
	ctrl, err := nodenet.NewEdge(nodenet.EdgeOptions{
		NodeName: name, NodeIP: addr, ClusterCIDR: l.cidr, BlockSize: 24, DB: n.db,
		ConfListPath: n.confList, BaseConfList: l.baseConfList(n), NetNSPath: nsPath(n.netns),
		Members: func() []nodenet.EdgeMember { return g.view(name) },
		Publish: func(c string) error { g.publish(name, c); return nil },
		Resync:  time.Second, Logger: testLogger(t, name),
	})
	if err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	g.ctrls[name] = ctrl
	g.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ctrl.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no conflist: %+v", name, ctrl.Status())
	}
	g.kick()
	return &edgeNode{node: n, ctrl: ctrl}
}

// edgePartition: two nodes share the mesh; the mesh splits, a new node starts on each
// side (with 4 blocks in the cluster CIDR and two held, some claim must collide across
// the split), each gets a pod; after the heal the conflict is detected, the newer claim
// loses and re-claims, its pod on the lost block is reported, and pods on every node
// (the loser's new pod included) reach each other.
func TestEdgePartition(t *testing.T) {
	requireRoot(t)
	l := newLab(t, nil, "")
	l.cidr = netip.MustParsePrefix("10.246.0.0/22")
	g := newGossip()
	a := l.addEdgeNode(g, "edge-a", netip.MustParseAddr("192.168.77.21"), 0)
	b := l.addEdgeNode(g, "edge-b", netip.MustParseAddr("192.168.77.22"), 0)
	eventually(t, 10*time.Second, "a and b hold distinct blocks", func() error {
		if ba, bb := a.ctrl.Status().Block, b.ctrl.Status().Block; ba == bb || len(a.ctrl.Status().Routes) != 1 {
			return fmt.Errorf("a %s b %s routes %v", ba, bb, a.ctrl.Status().Routes)
		}
		return nil
	})
	blockA, blockB := a.ctrl.Status().Block, b.ctrl.Status().Block

	g.setSides(map[string]int{"edge-a": 1, "edge-b": 2})
	x := l.addEdgeNode(g, "edge-x", netip.MustParseAddr("192.168.77.23"), 1)
	time.Sleep(20 * time.Millisecond) // y's claim is strictly newer than x's
	y := l.addEdgeNode(g, "edge-y", netip.MustParseAddr("192.168.77.24"), 2)
	split := map[string]netip.Prefix{"edge-x": x.ctrl.Status().Block, "edge-y": y.ctrl.Status().Block}
	t.Logf("during the partition: a %s, b %s, x %s, y %s", blockA, blockB, split["edge-x"], split["edge-y"])
	pods := map[string]*pod{}
	for _, n := range []*edgeNode{a, b, x, y} {
		pods[n.name] = l.addPod(n.node, n.name+"-p0")
	}

	g.setSides(map[string]int{"edge-a": 0, "edge-b": 0, "edge-x": 0, "edge-y": 0})
	all := []*edgeNode{a, b, x, y}
	eventually(t, 15*time.Second, "blocks distinct after the heal", func() error {
		seen := map[netip.Prefix]string{}
		for _, n := range all {
			st := n.ctrl.Status()
			if o, dup := seen[st.Block]; dup {
				return fmt.Errorf("%s and %s hold %s", o, n.name, st.Block)
			}
			seen[st.Block] = n.name
			if len(st.Routes) != 3 {
				return fmt.Errorf("%s routes %v", n.name, st.Routes)
			}
		}
		return nil
	})
	if a.ctrl.Status().Block != blockA || b.ctrl.Status().Block != blockB {
		t.Fatalf("an older claim lost: a %s (was %s), b %s (was %s)", a.ctrl.Status().Block, blockA, b.ctrl.Status().Block, blockB)
	}
	var losers []*edgeNode
	for _, n := range []*edgeNode{x, y} {
		st := n.ctrl.Status()
		if st.Block == split[n.name] {
			if len(st.Lost) != 0 {
				t.Fatalf("%s kept its block but reports lost pods %+v", n.name, st.Lost)
			}
			continue
		}
		losers = append(losers, n)
		if len(st.Lost) != 1 || st.Lost[0].Name != n.name+"-p0" || st.Lost[0].Block != split[n.name] || st.Lost[0].IPs[0].Addr() != pods[n.name].ip {
			t.Fatalf("%s re-claimed %s → %s but reports lost pods %+v", n.name, split[n.name], st.Block, st.Lost)
		}
	}
	if len(losers) == 0 {
		t.Fatalf("no conflict resolved: a %s b %s x %s y %s", blockA, blockB, split["edge-x"], split["edge-y"])
	}
	if len(losers) == 2 && split["edge-x"] == split["edge-y"] {
		t.Fatalf("x's older claim on %s lost to y", split["edge-x"])
	}

	// Pods on the winners' blocks and a new pod on each loser reach each other.
	var mesh []*pod
	for _, n := range all {
		p := pods[n.name]
		for _, lo := range losers {
			if lo == n {
				p = l.addPod(n.node, n.name+"-p1")
				if !n.ctrl.Status().Block.Contains(p.ip) {
					t.Fatalf("%s new pod %s outside its new block %s", n.name, p.ip, n.ctrl.Status().Block)
				}
			}
		}
		serveTCP(t, p.netns, p.ip, 8080)
		mesh = append(mesh, p)
	}
	eventually(t, 10*time.Second, "routes programmed", func() error {
		for _, n := range all {
			if rs := ownedRoutes(t, n.node); len(rs) != 3 {
				return fmt.Errorf("%s routes %v", n.name, rs)
			}
		}
		return nil
	})
	meshCheck(t, mesh)
}

package nodenet

import (
	"net/netip"
	"testing"
	"time"

	"github.com/patronus/patronus/nodenet/alloc"
)

// A gossip "mesh" of EdgeClaimers: each side of a partition sees only its own side's
// claims; healing merges them.
type edgeNet struct {
	t     *testing.T
	now   time.Time
	nodes map[string]*EdgeClaimer
}

func (n *edgeNet) add(name string) *EdgeClaimer {
	e := &EdgeClaimer{Node: name, Cluster: pfx("10.244.0.0/22"), Bits: 24, Now: func() time.Time { return n.now }}
	n.nodes[name] = e
	return e
}

// round lets every node in side see the claims of side and step; it returns lost blocks.
func (n *edgeNet) round(side ...string) map[string]netip.Prefix {
	var seen []alloc.Claim
	for _, s := range side {
		if c, ok := n.nodes[s].Own(); ok {
			seen = append(seen, c)
		}
	}
	lost := map[string]netip.Prefix{}
	for _, s := range side {
		_, l, err := n.nodes[s].Step(seen)
		if err != nil {
			n.t.Fatalf("%s: %v", s, err)
		}
		if l.IsValid() {
			lost[s] = l
		}
		if c, ok := n.nodes[s].Own(); ok { // later nodes of the round see the new claim
			seen = append(seen, c)
		}
	}
	return lost
}

func TestEdgePartitionHeal(t *testing.T) {
	n := &edgeNet{t: t, now: time.Unix(1000, 0), nodes: map[string]*EdgeClaimer{}}
	n.add("a")
	n.add("b")
	if lost := n.round("a", "b"); len(lost) != 0 {
		t.Fatalf("lost %v", lost)
	}
	ca, _ := n.nodes["a"].Own()
	cb, _ := n.nodes["b"].Own()
	if ca.Block == cb.Block {
		t.Fatalf("a and b share %s", ca.Block)
	}
	// Partition {a, x} | {b, y}; x and y start on each side. With 4 blocks and a, b
	// holding two, x picks b's block or the free one, y picks a's or the free one: some
	// claim always conflicts across the partition.
	n.now = n.now.Add(time.Minute)
	n.add("y")
	n.add("x")
	n.round("a", "x")
	n.now = n.now.Add(time.Second) // y claims later than x
	n.round("b", "y")
	cx, _ := n.nodes["x"].Own()
	cy, _ := n.nodes["y"].Own()
	// Heal: everyone sees everyone. Losers re-claim; afterwards no overlap and everyone
	// agrees.
	lost := n.round("a", "b", "x", "y")
	lost2 := n.round("a", "b", "x", "y")
	if len(lost2) != 0 {
		t.Fatalf("second round after heal still lost %v", lost2)
	}
	held := map[netip.Prefix]string{}
	for name, e := range n.nodes {
		c, ok := e.Own()
		if !ok {
			t.Fatalf("%s holds nothing", name)
		}
		if o, dup := held[c.Block]; dup {
			t.Fatalf("%s and %s both hold %s", o, name, c.Block)
		}
		held[c.Block] = name
	}
	if _, ok := lost["a"]; ok {
		t.Errorf("a (oldest) lost its block")
	}
	if _, ok := lost["b"]; ok {
		t.Errorf("b (oldest) lost its block")
	}
	if len(lost) == 0 {
		t.Fatalf("no conflict detected after heal (x %s, y %s, a %s, b %s)", cx.Block, cy.Block, ca.Block, cb.Block)
	}
	if l, ok := lost["x"]; ok && cx.Block == cy.Block {
		t.Errorf("x (older) lost %s to y", l)
	}
}

func TestEdgeSameBlockBothSides(t *testing.T) {
	// Deterministic collision: two new nodes on two sides restored with the same block.
	n := &edgeNet{t: t, now: time.Unix(2000, 0), nodes: map[string]*EdgeClaimer{}}
	b := pfx("10.244.1.0/24")
	n.add("n2").Restore(alloc.Claim{Block: b, Node: "n2", At: n.now})
	n.add("n1").Restore(alloc.Claim{Block: b, Node: "n1", At: n.now})
	n.add("old").Restore(alloc.Claim{Block: b, Node: "old", At: n.now.Add(-time.Hour)})
	lost := n.round("n1", "n2", "old")
	if len(lost) != 2 || lost["n1"] != b || lost["n2"] != b {
		t.Fatalf("lost %v: the oldest claim must win", lost)
	}
	if c, _ := n.nodes["old"].Own(); c.Block != b {
		t.Fatalf("old holds %s", c.Block)
	}
	c1, _ := n.nodes["n1"].Own()
	c2, _ := n.nodes["n2"].Own()
	if c1.Block == c2.Block || c1.Block == b || c2.Block == b {
		t.Fatalf("re-claims overlap: n1 %s n2 %s", c1.Block, c2.Block)
	}
	// Equal age: lowest name wins.
	m := &edgeNet{t: t, now: time.Unix(3000, 0), nodes: map[string]*EdgeClaimer{}}
	m.add("zz").Restore(alloc.Claim{Block: b, Node: "zz", At: m.now})
	m.add("aa").Restore(alloc.Claim{Block: b, Node: "aa", At: m.now})
	if lost := m.round("zz", "aa"); len(lost) != 1 || lost["zz"] != b {
		t.Fatalf("tie: lost %v, want zz", lost)
	}
}

func TestClaimFormat(t *testing.T) {
	c := alloc.Claim{Block: pfx("10.244.3.0/24"), Node: "n", At: time.UnixMilli(1700000000123)}
	s := FormatClaim(c)
	if s != "10.244.3.0/24@1700000000123" {
		t.Fatalf("format %s", s)
	}
	back, err := ParseClaim("n", s)
	if err != nil || back.Block != c.Block || !back.At.Equal(c.At) || back.Node != "n" {
		t.Fatalf("parse %+v %v", back, err)
	}
	for _, bad := range []string{"10.244.3.0/24", "x@1", "10.244.3.0/24@x"} {
		if _, err := ParseClaim("n", bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

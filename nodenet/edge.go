package nodenet

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/patronus/patronus/nodenet/alloc"
)

// EdgeClaimer is a node's block claim in edge mode (no API server): claims travel through
// the gossip mesh (FormatClaim / ParseClaim give their compact form, e.g. a member tag),
// and every node resolves what it has seen with alloc.Resolve, so after a partition heals
// all nodes agree on the winner of a doubly claimed block (oldest claim, then lowest node
// name). The loser re-claims a block nobody holds; Step reports the lost block so its
// pods can be listed (LostPods). Transport-agnostic and clock-injected: tests drive it
// directly.
type EdgeClaimer struct {
	Node    string
	Cluster netip.Prefix
	Bits    int
	Now     func() time.Time

	own *alloc.Claim
}

// Own is the node's current claim, if any.
func (e *EdgeClaimer) Own() (alloc.Claim, bool) {
	if e.own == nil {
		return alloc.Claim{}, false
	}
	return *e.own, true
}

// Restore sets the claim saved before a restart (its original time keeps its seniority).
func (e *EdgeClaimer) Restore(c alloc.Claim) { e.own = &c }

// Step takes every claim seen from other nodes and returns the node's claim after
// resolution; lost is the block it held and lost (zero if none).
func (e *EdgeClaimer) Step(seen []alloc.Claim) (own alloc.Claim, lost netip.Prefix, err error) {
	if err := alloc.Validate(e.Cluster, e.Bits); err != nil {
		return own, lost, err
	}
	now := time.Now
	if e.Now != nil {
		now = e.Now
	}
	var others []alloc.Claim
	for _, c := range seen {
		if c.Node != e.Node {
			others = append(others, c)
		}
	}
	if e.own != nil {
		r := alloc.Resolve(append(others, *e.own))
		if w, ok := r.Winners[e.own.Block.Masked()]; ok && w.Node == e.Node {
			return *e.own, lost, nil
		}
		lost = e.own.Block
		e.own = nil
	}
	// Taken: whatever the others hold among themselves, and the block just lost.
	taken := map[netip.Prefix]bool{}
	for b := range alloc.Resolve(others).Winners {
		taken[b] = true
	}
	for _, c := range others { // overlapping sizes: never pick a block inside any claim
		for _, b := range alloc.Candidates(e.Cluster, e.Bits, e.Node, nil, 0) {
			if b.Overlaps(c.Block) {
				taken[b] = true
			}
		}
	}
	if lost.IsValid() {
		taken[lost] = true
	}
	cands := alloc.Candidates(e.Cluster, e.Bits, e.Node, taken, 1)
	if len(cands) == 0 {
		return own, lost, fmt.Errorf("nodenet: no free /%d block left in %s", e.Bits, e.Cluster)
	}
	e.own = &alloc.Claim{Block: cands[0], Node: e.Node, At: now()}
	return *e.own, lost, nil
}

// FormatClaim is a claim's compact form, "<block>@<unix ms>" (e.g. a Serf tag value).
func FormatClaim(c alloc.Claim) string {
	return c.Block.Masked().String() + "@" + strconv.FormatInt(c.At.UnixMilli(), 10)
}

// ParseClaim reads FormatClaim's form for node.
func ParseClaim(node, v string) (alloc.Claim, error) {
	b, at, ok := strings.Cut(v, "@")
	if !ok {
		return alloc.Claim{}, fmt.Errorf("nodenet: claim %q: want <block>@<unix ms>", v)
	}
	p, err := netip.ParsePrefix(b)
	if err != nil {
		return alloc.Claim{}, fmt.Errorf("nodenet: claim %q: %w", v, err)
	}
	ms, err := strconv.ParseInt(at, 10, 64)
	if err != nil {
		return alloc.Claim{}, fmt.Errorf("nodenet: claim %q: %w", v, err)
	}
	return alloc.Claim{Block: p.Masked(), Node: node, At: time.UnixMilli(ms)}, nil
}

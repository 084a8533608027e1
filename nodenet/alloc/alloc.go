// Package alloc is the pure part of per-node pod CIDR allocation: carving a cluster CIDR
// into node blocks, naming the API object that claims a block, choosing the next block to
// try, and resolving conflicting claims seen through gossip (edge mode, no API server):
// the oldest claim wins, ties go to the lowest node name. No clock, no network.
package alloc

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"math/big"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// LeasePrefix starts the name of every block Lease (docs/CONTRACT.md).
const LeasePrefix = "patronus-block-"

// Count is the number of blocks of size bits in cluster (0 when bits is not longer than
// the cluster prefix or longer than the address). Capped at 1<<30: a cluster never needs
// more, and the cap keeps the arithmetic in int.
func Count(cluster netip.Prefix, bits int) int {
	if !cluster.IsValid() || bits < cluster.Bits() || bits > cluster.Addr().BitLen() {
		return 0
	}
	n := bits - cluster.Bits()
	if n > 30 {
		n = 30
	}
	return 1 << n
}

// Block returns the i-th block of size bits in cluster (0-based).
func Block(cluster netip.Prefix, bits, i int) (netip.Prefix, error) {
	if i < 0 || i >= Count(cluster, bits) {
		return netip.Prefix{}, fmt.Errorf("alloc: block %d of /%d out of range in %s", i, bits, cluster)
	}
	base := new(big.Int).SetBytes(cluster.Masked().Addr().AsSlice())
	off := new(big.Int).Lsh(big.NewInt(int64(i)), uint(cluster.Addr().BitLen()-bits))
	b := base.Add(base, off).FillBytes(make([]byte, cluster.Addr().BitLen()/8))
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, bits), nil
}

// Validate checks that a block size fits the cluster CIDR and leaves room for a gateway
// and at least one pod.
func Validate(cluster netip.Prefix, bits int) error {
	if !cluster.IsValid() {
		return fmt.Errorf("alloc: no cluster CIDR")
	}
	if bits < cluster.Bits() {
		return fmt.Errorf("alloc: node block /%d is larger than the cluster CIDR %s", bits, cluster)
	}
	if bits > cluster.Addr().BitLen()-2 {
		return fmt.Errorf("alloc: node block /%d leaves no room for pods (at most /%d)", bits, cluster.Addr().BitLen()-2)
	}
	return nil
}

// Gateway is the block's first address: the bridge address on the node.
func Gateway(block netip.Prefix) netip.Addr { return block.Masked().Addr().Next() }

// LeaseName is the name of the Lease claiming block: patronus-block-10-244-1-0-24
// (IPv6: colons become dashes as well, so the name stays a DNS subdomain).
func LeaseName(block netip.Prefix) string {
	b := block.Masked()
	s := strings.NewReplacer(".", "-", ":", "-").Replace(b.Addr().String())
	return LeasePrefix + s + "-" + strconv.Itoa(b.Bits())
}

// ParseLeaseName is LeaseName's inverse for IPv4 blocks (IPv6 names are not reversible:
// the claim's annotation carries the prefix, this is only a cross-check).
func ParseLeaseName(name string) (netip.Prefix, bool) {
	rest, ok := strings.CutPrefix(name, LeasePrefix)
	if !ok {
		return netip.Prefix{}, false
	}
	parts := strings.Split(rest, "-")
	if len(parts) != 5 {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(strings.Join(parts[:4], ".") + "/" + parts[4])
	if err != nil || p != p.Masked() {
		return netip.Prefix{}, false
	}
	return p, true
}

// Candidates returns the blocks of cluster not in taken, in the order a node should try
// them: starting at an offset derived from the node name, so nodes claiming at the same
// moment mostly try different blocks first and rarely collide (a collision is still
// safe: the API server's create is the arbiter). At most limit candidates (0 = all).
func Candidates(cluster netip.Prefix, bits int, node string, taken map[netip.Prefix]bool, limit int) []netip.Prefix {
	n := Count(cluster, bits)
	if n == 0 {
		return nil
	}
	h := fnv.New32a()
	h.Write([]byte(node))
	start := int(h.Sum32() % uint32(n))
	var out []netip.Prefix
	for k := range n {
		b, err := Block(cluster, bits, (start+k)%n)
		if err != nil || taken[b] {
			continue
		}
		out = append(out, b)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out
}

// Claim is one node's claim on a block as seen through gossip.
type Claim struct {
	Block netip.Prefix
	Node  string
	// At is when the node made the claim (its own clock, carried in the signed
	// announcement); older wins.
	At time.Time
}

// Better reports whether a beats b for the same block: the older claim, then the lower
// node name. It is a strict total order on claims with distinct nodes, so every node that
// sees the same claims picks the same winner.
func Better(a, b Claim) bool {
	if !a.At.Equal(b.At) {
		return a.At.Before(b.At)
	}
	return a.Node < b.Node
}

// Resolution is the outcome of Resolve.
type Resolution struct {
	// Winners maps each claimed block to the claim that holds it.
	Winners map[netip.Prefix]Claim
	// Losers are claims that overlap a winner (same block, or blocks that overlap one
	// another), sorted by node then block. A losing node must re-claim.
	Losers []Claim
}

// Resolve decides, from every claim a node has seen, who holds what. Claims on
// overlapping prefixes (not only identical ones: a misconfigured block size) conflict.
// One node holds at most one block: of several claims by the same node only its best
// (oldest) one counts, the others lose. The result does not depend on the order of
// claims.
func Resolve(claims []Claim) Resolution {
	cs := slices.Clone(claims)
	slices.SortFunc(cs, func(a, b Claim) int {
		if Better(a, b) {
			return -1
		}
		if Better(b, a) {
			return 1
		}
		return cmp.Or(a.Block.Addr().Compare(b.Block.Addr()), cmp.Compare(a.Block.Bits(), b.Block.Bits()))
	})
	res := Resolution{Winners: map[netip.Prefix]Claim{}}
	holds := map[string]bool{}
	for _, c := range cs {
		if !c.Block.IsValid() || c.Node == "" {
			continue
		}
		c.Block = c.Block.Masked()
		lost := holds[c.Node]
		if !lost {
			for b := range res.Winners {
				if b.Overlaps(c.Block) {
					lost = true
					break
				}
			}
		}
		if lost {
			if w, ok := res.Winners[c.Block]; ok && w.Node == c.Node {
				continue // the same claim seen twice
			}
			res.Losers = append(res.Losers, c)
			continue
		}
		res.Winners[c.Block] = c
		holds[c.Node] = true
	}
	slices.SortFunc(res.Losers, func(a, b Claim) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), a.Block.Addr().Compare(b.Block.Addr()))
	})
	return res
}

// Held returns the block node holds in r, if any.
func (r Resolution) Held(node string) (netip.Prefix, bool) {
	for b, c := range r.Winners {
		if c.Node == node {
			return b, true
		}
	}
	return netip.Prefix{}, false
}

package nodenet

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/nodenet/alloc"
)

// Claims announced on behalf of nodes that run no mesh.
//
// With an API server a block is claimed there (a Lease, or the Node's podCIDR) and the
// claim is also spread as a signed podblock announcement. When Nodes are marked gateways
// only the gateways run the mesh, so the other nodes cannot sign their own claims: every
// marked gateway announces them on their behalf (announce.Announcement.Node = the node),
// from the Node and Lease caches it already trusts. All gateways announce, each in its
// own slots, so one gateway going away leaves the claims announced; readers key claims by
// node (AnnouncedClaims), never count announcements.

// relayClaims returns the claims self announces on behalf of other nodes: none unless
// self is a marked gateway; then, for every other Node that is not marked and not being
// deleted, its block, claimed at: spec.podCIDR(s) (at the Node's creation, the API keeps
// no assignment time), else the block Lease it holds (at the Lease's acquire time, else
// its creation; the oldest Lease if it holds several). Blocks outside cluster are left
// out (receivers authorise only the cluster's CIDRs; no cluster-cidr: none). Sorted by
// node name.
func relayClaims(self string, nodes []*corev1.Node, leases []*coordinationv1.Lease, cluster netip.Prefix) []alloc.Claim {
	if !cluster.IsValid() || !slices.ContainsFunc(nodes, func(n *corev1.Node) bool { return n.Name == self && isGateway(n) }) {
		return nil
	}
	inCluster := func(b netip.Prefix) bool { return b.Bits() >= cluster.Bits() && cluster.Contains(b.Addr()) }
	held := map[string]alloc.Claim{}
	for _, l := range leases {
		b, ok := leaseBlock(l)
		if !ok || l.Spec.HolderIdentity == nil || l.DeletionTimestamp != nil || !inCluster(b) {
			continue
		}
		at := l.CreationTimestamp.Time
		if l.Spec.AcquireTime != nil {
			at = l.Spec.AcquireTime.Time
		}
		h := *l.Spec.HolderIdentity
		if cur, ok := held[h]; !ok || at.Before(cur.At) || (at.Equal(cur.At) && b.Addr().Less(cur.Block.Addr())) {
			held[h] = alloc.Claim{Block: b, Node: h, At: at}
		}
	}
	var out []alloc.Claim
	for _, n := range nodes {
		if n.Name == self || isGateway(n) || n.DeletionTimestamp != nil {
			continue
		}
		c, ok := held[n.Name]
		if b, isNode := nodeBlock(n); isNode {
			c, ok = alloc.Claim{Block: b, Node: n.Name, At: n.CreationTimestamp.Time}, inCluster(b)
		}
		if ok && c.At.UnixMilli() > 0 {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b alloc.Claim) int { return cmp.Compare(a.Node, b.Node) })
	return out
}

// RelayAnnouncement is the podblock announcement of c made on node c.Node's behalf (the
// signer fills in its own origin, cluster, sequence and expiry).
func RelayAnnouncement(c alloc.Claim) announce.Announcement {
	a := BlockAnnouncement(c.Block, c.At)
	a.Node = c.Node
	return a
}

// RelayWithdrawal withdraws the claim announced on node's behalf.
func RelayWithdrawal(node string) announce.Announcement {
	return announce.Announcement{Kind: announce.KindPodBlock, Node: node, Withdraw: true}
}

// AnnouncedClaims is one claim per node of cluster ("" = any) from verified podblock
// announcements: a node's own signed claim wins; without one, of the claims gateways
// made on its behalf (every gateway announces the same API state), the one claimed
// latest (a gateway that has not seen a re-claim yet holds the older one), then the one
// from the lowest origin. The edge-mode view (MeshClaims) takes own claims only.
func AnnouncedClaims(anns []announce.Announcement, cluster string) map[string]alloc.Claim {
	type pick struct {
		claim  alloc.Claim
		own    bool
		origin string
	}
	better := func(a, b pick) bool { // a replaces b
		switch {
		case a.own != b.own:
			return a.own
		case !a.claim.At.Equal(b.claim.At):
			return a.claim.At.After(b.claim.At)
		}
		return a.origin < b.origin
	}
	picks := map[string]pick{}
	for _, a := range anns {
		if a.Kind != announce.KindPodBlock || a.Withdraw || len(a.Prefixes) != 1 || (cluster != "" && a.Cluster != cluster) {
			continue
		}
		p := pick{claim: alloc.Claim{Block: a.Prefixes[0], Node: a.Subject(), At: time.UnixMilli(a.Claimed)}, own: !a.OnBehalf(), origin: a.Origin}
		if cur, ok := picks[p.claim.Node]; !ok || better(p, cur) {
			picks[p.claim.Node] = p
		}
	}
	out := make(map[string]alloc.Claim, len(picks))
	for n, p := range picks {
		out[n] = p.claim
	}
	return out
}

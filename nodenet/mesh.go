package nodenet

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"time"

	"github.com/hashicorp/serf/serf"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/nodenet/alloc"
)

// TagPodBlock is the Serf member tag mirroring a node's claim in FormatClaim form
// (docs/CONTRACT.md), for `patronus members`. It is only a display: member tags carry no
// signature of their own, so claims are read from the signed podblock announcements.
const TagPodBlock = "podblock"

// MeshClaims turns the mesh into the edge-mode view: alive members of cluster, their
// gossip address as the underlay address, and as claim the verified podblock
// announcement (announce.KindPodBlock) that member signed ("" while there is none). A
// claim is certified for its origin's name by the cluster key, so no node can claim in
// another's name, and a member that failed or left (a partition) holds nothing here.
// Claims a gateway announced on another node's behalf (Announcement.Node, relay.go) are
// not claims here: conflicts are resolved between the claimants' own signed claims only.
func MeshClaims(ms []mesh.Member, anns []announce.Announcement, cluster string) []EdgeMember {
	claims, keys := map[string]string{}, map[string]string{}
	for _, a := range anns {
		if a.Kind != announce.KindPodBlock || a.Withdraw || a.OnBehalf() || len(a.Prefixes) != 1 || (cluster != "" && a.Cluster != cluster) {
			continue
		}
		claims[a.Origin] = FormatClaim(alloc.Claim{Block: a.Prefixes[0], Node: a.Origin, At: time.UnixMilli(a.Claimed)})
		if a.Tunnel != nil {
			keys[a.Origin] = a.Tunnel.PublicKey // node-to-node encryption (BlockAnnouncementKey)
		}
	}
	var out []EdgeMember
	for _, m := range ms {
		if m.Status != serf.StatusAlive.String() || (cluster != "" && m.Cluster != cluster) {
			continue
		}
		host, _, err := net.SplitHostPort(m.Addr)
		if err != nil {
			host = m.Addr
		}
		a, err := netip.ParseAddr(host)
		if err != nil {
			continue
		}
		out = append(out, EdgeMember{Name: m.Name, Addr: a.Unmap(), Claim: claims[m.Name], Key: keys[m.Name]})
	}
	return out
}

// MeshPublisher returns an EdgeOptions.Publish that announces the claim signed through
// the mesh (BlockAnnouncement; the mesh re-signs it every refresh and after joins, so a
// healed partition learns it) and mirrors it in TagPodBlock.
func MeshPublisher(n *mesh.Node) func(claim string) error {
	p := meshPublisher(n)
	return func(claim string) error { return p(claim, "") }
}

// meshPublisher is MeshPublisher with the node's WireGuard public key in the claim
// (pub "": none): an EdgeOptions.PublishKey.
func meshPublisher(n *mesh.Node) func(claim, pub string) error {
	tag := SerfPublisher(n.Serf())
	return func(claim, pub string) error {
		c, err := ParseClaim("", claim)
		if err != nil {
			return err
		}
		if err := n.Announce(BlockAnnouncementKey(c.Block, c.At, pub)); err != nil {
			return fmt.Errorf("nodenet: announce claim: %w", err)
		}
		return tag(claim)
	}
}

// MeshEdge completes o for a running mesh node of cluster: Members from MeshClaims,
// Publish and PublishKey from MeshPublisher and Changes from the node's Subscribe (the
// wiring of an edge-mode agent). With node encryption on (o.Encrypt.Mode wireguard) the
// claim also carries the node's WireGuard public key (the current one: a rotation
// re-announces the claim with the new key), so peers learn it signed: o.Encrypt.Key is
// then loaded from o.DB (KVWGKey), or made, here, so that the first claim carries it
// (if that fails the controller loads it and reports the error).
func MeshEdge(o EdgeOptions, n *mesh.Node, cluster string) EdgeOptions {
	o.Members = func() []EdgeMember { return MeshClaims(n.Members(), n.State().List(), cluster) }
	if m, _ := encryptionMode(o.Encrypt.Mode); m == EncryptionWireGuard && o.Encrypt.Key == (wgtypes.Key{}) {
		if k, err := LoadOrCreateWGKey(context.Background(), dbKV(o.DB), time.Now()); err == nil {
			o.Encrypt.Key = k
		}
	}
	o.Publish, o.PublishKey = MeshPublisher(n), meshPublisher(n)
	if o.Changes == nil {
		// Reconcile on every membership or claim change, not only at Resync. The
		// subscription lives as long as n: an unread wake-up costs the mesh nothing.
		o.Changes, _ = n.Subscribe()
	}
	return o
}

// SerfPublisher returns a function that sets TagPodBlock on the local member, keeping
// its other tags (cluster, cert, ...).
func SerfPublisher(s *serf.Serf) func(claim string) error {
	return func(claim string) error {
		tags := maps.Clone(s.LocalMember().Tags)
		if tags == nil {
			tags = map[string]string{}
		}
		if tags[TagPodBlock] == claim {
			return nil // a re-publish: every tag update is a gossip broadcast of its own
		}
		tags[TagPodBlock] = claim
		if err := s.SetTags(tags); err != nil {
			return fmt.Errorf("nodenet: set tag %s: %w", TagPodBlock, err)
		}
		return nil
	}
}

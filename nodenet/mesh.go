package nodenet

import (
	"fmt"
	"maps"
	"net"
	"net/netip"

	"github.com/hashicorp/serf/serf"

	"github.com/patronus/patronus/mesh"
)

// TagPodBlock is the Serf member tag carrying a node's edge-mode claim in FormatClaim form
// (docs/CONTRACT.md). Member tags travel inside the mesh's encrypted gossip, and a member
// is admitted only with a node certificate for its name, so a claim cannot be made in
// another node's name.
const TagPodBlock = "podblock"

// MeshMembers turns the mesh's member list into the edge-mode view: alive members of
// cluster, their gossip address as the underlay address, their TagPodBlock claim.
func MeshMembers(ms []mesh.Member, cluster string) []EdgeMember {
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
		out = append(out, EdgeMember{Name: m.Name, Addr: a.Unmap(), Claim: m.Tags[TagPodBlock]})
	}
	return out
}

// SerfPublisher returns an EdgeOptions.Publish that sets TagPodBlock on the local member,
// keeping its other tags (cluster, cert, ...).
func SerfPublisher(s *serf.Serf) func(claim string) error {
	return func(claim string) error {
		tags := maps.Clone(s.LocalMember().Tags)
		if tags == nil {
			tags = map[string]string{}
		}
		tags[TagPodBlock] = claim
		if err := s.SetTags(tags); err != nil {
			return fmt.Errorf("nodenet: set tag %s: %w", TagPodBlock, err)
		}
		return nil
	}
}

package mcs

import (
	"crypto/ed25519"
	"net/netip"
	"testing"
	"time"

	"github.com/patronus/patronus/mcs/resolve"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/mesh/trust"
)

// signingNode is a MeshNode that signs like mesh.Node (same size limit) and delivers to a
// real Receiver, so splitting and reassembly meet the real wire rules.
type signingNode struct {
	signer *announce.Signer
	recv   *announce.Receiver
	sent   int
}

func (n *signingNode) Announce(a announce.Announcement) error {
	wire, _, err := n.signer.Sign(a, time.Minute)
	if err != nil {
		return err
	}
	n.sent++
	_, err = n.recv.Receive(wire)
	return err
}

func (n *signingNode) State() *announce.State { return n.recv.State() }

func newSigningNode(t *testing.T) *signingNode {
	k, err := trust.GenerateClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	v, err := trust.NewVerifier(trust.Cluster{ID: "cluster-west", PublicKey: k.Public().(ed25519.PublicKey),
		CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}})
	if err != nil {
		t.Fatal(err)
	}
	id, err := trust.NewIdentity("cluster-west", k, "gateway-node-with-a-long-name", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r, err := announce.NewReceiver(announce.ReceiverOptions{Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	return &signingNode{signer: announce.NewSigner(id, nil), recv: r}
}

func bigExport(n int, v6 bool) resolve.Export {
	e := resolve.Export{Namespace: "production", Name: "checkout-service", Type: resolve.TypeClusterSetIP,
		SessionAffinity: resolve.AffinityClientIP, AffinityTimeout: 600, ExportedAt: time.UnixMilli(1767225600000).UTC(),
		Ports: []resolve.Port{{Name: "http", Port: 80, Protocol: "TCP", TargetPort: 8080}, {Name: "grpc", Port: 9090, Protocol: "TCP"}}}
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(i%250 + 1)})
		if v6 {
			a = netip.AddrFrom16([16]byte{0xfd, 0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, byte(i >> 8), byte(i)})
		}
		e.Endpoints = append(e.Endpoints, resolve.Endpoint{Addr: a, Ready: i%3 != 0})
	}
	return e
}

func TestMeshAnnouncerSplitsLargeExports(t *testing.T) {
	tests := []struct {
		name      string
		endpoints int
		v6        bool
		minParts  int
	}{
		{"small export in one announcement", 3, false, 1},
		{"no endpoints", 0, false, 1},
		{"hundred IPv4 endpoints", 100, false, 5},
		{"sixty IPv6 endpoints", 60, true, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := newSigningNode(t)
			m := NewMeshAnnouncer(n)
			e := bigExport(tc.endpoints, tc.v6)
			if err := m.Publish(e); err != nil {
				t.Fatal(err)
			}
			if got := m.parts["production/checkout-service"]; got < tc.minParts {
				t.Errorf("%d parts, want at least %d", got, tc.minParts)
			}
			_, got := m.Exports()
			if len(got) != 1 {
				t.Fatalf("exports %+v", got)
			}
			got[0].Cluster = ""
			if !got[0].Equal(e) {
				t.Errorf("reassembled export differs:\n got %+v\nwant %+v", got[0], e)
			}
			// Shrinking withdraws the parts no longer needed.
			small := bigExport(2, tc.v6)
			if err := m.Publish(small); err != nil {
				t.Fatal(err)
			}
			if l := len(n.State().List()); l != 1 {
				t.Errorf("%d announcements held after shrinking, want 1", l)
			}
			if err := m.Withdraw(e.Namespace, e.Name); err != nil {
				t.Fatal(err)
			}
			if _, got := m.Exports(); len(got) != 0 {
				t.Errorf("after withdraw: %+v", got)
			}
		})
	}
}

// memberNode adds serf's member view to a signingNode.
type memberNode struct {
	*signingNode
	members []mesh.Member
}

func (n *memberNode) Members() []mesh.Member { return n.members }

func TestMeshAnnouncerDropsFailedOrigins(t *testing.T) {
	sn := newSigningNode(t)
	n := &memberNode{signingNode: sn, members: []mesh.Member{{Name: "gateway-node-with-a-long-name", Cluster: "cluster-west", Status: "alive"}}}
	m := NewMeshAnnouncer(n)
	if err := m.Publish(bigExport(3, false)); err != nil {
		t.Fatal(err)
	}
	v1, got := m.Exports()
	if len(got) != 1 {
		t.Fatalf("alive origin: %+v", got)
	}
	n.members[0].Status = "failed"
	v2, got := m.Exports()
	if len(got) != 0 || v2 == v1 {
		t.Errorf("failed origin: exports %+v, version %d -> %d (must change)", got, v1, v2)
	}
	n.members[0].Status = "alive"
	if v3, got := m.Exports(); len(got) != 1 || v3 != v1 {
		t.Errorf("origin back: exports %+v, version %d (was %d)", got, v3, v1)
	}
}

package mesh

import (
	"context"
	"crypto/ed25519"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/mesh/trust"
)

// BuildTrust from remote-clusters entries as package config parses them (the one parser
// of the ConfigMap): pinned keys trusted for their cidr, gossip addresses as seeds.
func TestBuildTrustRemotes(t *testing.T) {
	k, _ := trust.GenerateClusterKey()
	pub := trust.EncodeKey(k.Public().(ed25519.PublicKey))
	west, _ := trust.GenerateClusterKey()
	westPub := trust.EncodeKey(west.Public().(ed25519.PublicKey))
	for _, tc := range []struct {
		name, yaml string
		gossip     []string
		trusted    bool
	}{
		{"endpoint gives gossip host", "- {id: west, endpoint: '203.0.113.5:51820', cidr: 10.2.0.0/16, publicKey: '" + westPub + "'}", []string{"203.0.113.5:7946"}, true},
		{"explicit gossip, no pinned key", "- {id: west, endpoint: 'a.example:1', cidr: '10.2.0.0/16', gossip: 'g.example:8000'}", []string{"g.example:8000"}, false},
		{"none", "[]", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := config.ParseRemoteClusters(tc.yaml, "east", netip.MustParsePrefix("10.244.0.0/16"), "")
			if err != nil {
				t.Fatal(err)
			}
			kf := filepath.Join(t.TempDir(), "k")
			os.WriteFile(kf, []byte(trust.EncodePrivateKey(k)), 0o600)
			tr, err := BuildTrust(context.Background(), TrustConfig{ClusterID: "east", NodeName: "n1",
				Keys: trust.FileSource{ClusterKeyFile: kf}, LocalCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Remotes: rs})
			if err != nil {
				t.Fatal(err)
			}
			if len(tr.Seeds) != len(tc.gossip) || (len(tc.gossip) > 0 && tr.Seeds[0] != tc.gossip[0]) {
				t.Fatalf("seeds %v, want %v", tr.Seeds, tc.gossip)
			}
			if got := tr.Verifier.Trusted("west"); got != tc.trusted {
				t.Fatalf("west trusted = %v", got)
			}
			if tc.trusted {
				if !tr.Verifier.Authorised("west", netip.MustParsePrefix("10.2.1.0/24")) || tr.Verifier.Authorised("west", netip.MustParsePrefix("10.9.0.0/16")) {
					t.Fatal("west authorised beyond (or not for) its cidr")
				}
			}
			if err := tr.Verifier.Verify(tr.Identity.Cert, tr.Identity.Cert.NotBefore); err != nil {
				t.Fatalf("own certificate: %v", err)
			}
			if trust.EncodeKey(tr.ClusterPublicKey) != pub {
				t.Fatal("cluster public key is not the file's")
			}
		})
	}
}

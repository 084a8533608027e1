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

func TestParseRemoteClusters(t *testing.T) {
	k, _ := trust.GenerateClusterKey()
	pub := trust.EncodeKey(k.Public().(ed25519.PublicKey))
	for _, tc := range []struct {
		name, yaml string
		gossip     []string
		trusted    int
		fail       bool
	}{
		{"endpoint gives gossip host", "- {id: west, endpoint: '203.0.113.5:51820', cidr: 10.2.0.0/16, publicKey: '" + pub + "'}", []string{"203.0.113.5:7946"}, 1, false},
		{"explicit gossip", "- {id: west, endpoint: 'a:1', cidr: '10.2.0.0/16,10.3.0.0/16', gossip: 'g.example:8000'}", []string{"g.example:8000"}, 0, false},
		{"gossip without port", "- {id: west, gossip: 'g.example', cidr: 10.2.0.0/16}", []string{"g.example:7946"}, 0, false},
		{"no id", "- {endpoint: 'a:1', cidr: 10.2.0.0/16}", nil, 0, true},
		{"bad cidr", "- {id: w, cidr: 10.2.0.0/33}", nil, 0, true},
		{"unknown field", "- {id: w, cidr: 10.2.0.0/16, colour: red}", nil, 0, true},
		{"bad key", "- {id: w, cidr: 10.2.0.0/16, publicKey: nope}", nil, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := ParseRemoteClusters([]byte(tc.yaml))
			if (err != nil) != tc.fail {
				t.Fatalf("err %v", err)
			}
			if tc.fail {
				return
			}
			dir := t.TempDir()
			kf := filepath.Join(dir, "k")
			os.WriteFile(kf, []byte(trust.EncodePrivateKey(k)), 0o600)
			tr, err := BuildTrust(context.Background(), TrustConfig{ClusterID: "east", NodeName: "n1",
				Keys: trust.FileSource{ClusterKeyFile: kf}, LocalCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Remotes: rs})
			if tc.name == "bad key" {
				if err == nil {
					t.Fatal("bad pinned key accepted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(tr.Seeds) != len(tc.gossip) || (len(tc.gossip) > 0 && tr.Seeds[0] != tc.gossip[0]) {
				t.Fatalf("seeds %v, want %v", tr.Seeds, tc.gossip)
			}
			if got := tr.Verifier.Trusted("west"); got != (tc.trusted == 1) {
				t.Fatalf("west trusted = %v", got)
			}
			if err := tr.Verifier.Verify(tr.Identity.Cert, tr.Identity.Cert.NotBefore); err != nil {
				t.Fatalf("own certificate: %v", err)
			}
		})
	}
}

func TestRemotesFromConfig(t *testing.T) {
	k, _ := trust.GenerateClusterKey()
	pub := k.Public().(ed25519.PublicKey)
	rs := RemotesFromConfig([]config.RemoteCluster{
		{ID: "west", Endpoint: "203.0.113.5:51820", CIDR: netip.MustParsePrefix("10.2.0.0/16"), PublicKey: pub},
		{ID: "south", Endpoint: "198.51.100.1:51820", Gossip: "198.51.100.1:8000", CIDR: netip.MustParsePrefix("10.3.0.0/16")},
	})
	tc, ok, err := rs[0].Trust()
	if err != nil || !ok || !tc.PublicKey.Equal(pub) || tc.CIDRs[0] != netip.MustParsePrefix("10.2.0.0/16") {
		t.Fatalf("west: %+v %v %v", tc, ok, err)
	}
	if _, ok, _ := rs[1].Trust(); ok {
		t.Fatal("south has no pinned key but is trusted")
	}
	if g, _ := rs[0].GossipAddr(); g != "203.0.113.5:7946" {
		t.Fatalf("west gossip %q", g)
	}
	if g, _ := rs[1].GossipAddr(); g != "198.51.100.1:8000" {
		t.Fatalf("south gossip %q", g)
	}
}

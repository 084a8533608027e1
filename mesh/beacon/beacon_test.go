package beacon

import (
	"crypto/ed25519"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/patronus/patronus/mesh/trust"
)

func TestOpen(t *testing.T) {
	now := time.Now()
	key := func() ed25519.PrivateKey { k, _ := trust.GenerateClusterKey(); return k }
	east, stranger := key(), key()
	v, err := trust.NewVerifier(trust.Cluster{ID: "east", PublicKey: east.Public().(ed25519.PublicKey)})
	if err != nil {
		t.Fatal(err)
	}
	id := func(cluster string, k ed25519.PrivateKey, node string) trust.Identity {
		i, err := trust.NewIdentity(cluster, k, node, now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	a := id("east", east, "a")
	seal := func(b Beacon, i trust.Identity) []byte {
		w, err := Seal(b, i)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	good := Beacon{Cluster: "east", Node: "a", Gossip: "10.0.0.1:7946", Time: now.UnixMilli()}
	unsigned, _ := json.Marshal(envelope{Body: []byte(`{"cluster":"east","node":"a","gossip":"10.0.0.1:7946"}`)})
	wrongSig := func() []byte {
		var env envelope
		json.Unmarshal(seal(good, a), &env)
		env.Sig[0] ^= 1
		w, _ := json.Marshal(env)
		return w
	}()
	for _, tc := range []struct {
		name string
		wire []byte
		want Reason
	}{
		{"valid", seal(good, a), ""},
		{"garbage", []byte("xx"), ReasonMalformed},
		{"unsigned", unsigned, ReasonUnsigned},
		{"wrong signature", wrongSig, ReasonBadSignature},
		{"other cluster, not pinned", seal(Beacon{Cluster: "west", Node: "w", Time: now.UnixMilli()}, id("west", stranger, "w")), ReasonUnknownSigner},
		{"claims another node", seal(Beacon{Cluster: "east", Node: "b", Time: now.UnixMilli()}, a), ReasonMismatch},
		{"stale", seal(Beacon{Cluster: "east", Node: "a", Time: now.Add(-time.Hour).UnixMilli()}, a), ReasonStale},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Open(tc.wire, v, now)
			if got := ReasonOf(err); got != tc.want {
				t.Fatalf("reason %q (%v), want %q", got, err, tc.want)
			}
			if tc.want == "" && b != good {
				t.Fatalf("beacon %+v, want %+v", b, good)
			}
		})
	}
}

func TestResolveGossip(t *testing.T) {
	src := netip.MustParseAddr("192.0.2.7")
	for _, tc := range []struct{ gossip, want string }{
		{"10.0.0.1:7946", "10.0.0.1:7946"},
		{"0.0.0.0:7946", "192.0.2.7:7946"},
		{":7000", "192.0.2.7:7000"},
	} {
		got, err := ResolveGossip(Beacon{Gossip: tc.gossip}, src)
		if err != nil || got != tc.want {
			t.Errorf("ResolveGossip(%q) = %q, %v; want %q", tc.gossip, got, err, tc.want)
		}
	}
	if _, err := ResolveGossip(Beacon{Gossip: "nonsense"}, src); err == nil {
		t.Error("accepted an address without port")
	}
}

package trust

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"
)

func mustKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	k, err := GenerateClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

func TestVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	local, remote, stranger := mustKey(t), mustKey(t), mustKey(t)
	v, err := NewVerifier(
		Cluster{ID: "east", PublicKey: pub(local), CIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}},
		Cluster{ID: "west", PublicKey: pub(remote), CIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}},
	)
	if err != nil {
		t.Fatal(err)
	}
	nodeKey := pub(mustKey(t))
	issue := func(cluster string, k ed25519.PrivateKey, nb, na time.Time) Certificate {
		c, err := Issue(cluster, k, "n1", nodeKey, nb, na)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	valid := func(cluster string, k ed25519.PrivateKey) Certificate {
		return issue(cluster, k, now.Add(-time.Hour), now.Add(time.Hour))
	}
	tampered := valid("east", local)
	tampered.Node = "n2"
	for _, tc := range []struct {
		name string
		cert Certificate
		want error
	}{
		{"local cluster", valid("east", local), nil},
		{"pinned remote", valid("west", remote), nil},
		{"unpinned cluster", valid("north", stranger), ErrUnknownSigner},
		{"known id, wrong key", valid("west", stranger), ErrUnknownSigner},
		{"remote key claims local id", valid("east", remote), ErrUnknownSigner},
		{"tampered node name", tampered, ErrUnknownSigner},
		{"expired", issue("east", local, now.Add(-2*time.Hour), now.Add(-time.Hour)), ErrCertExpired},
		{"not yet valid", issue("east", local, now.Add(time.Hour), now.Add(2*time.Hour)), ErrCertExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := v.Verify(tc.cert, now)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestEncodings(t *testing.T) {
	k := mustKey(t)
	id, err := NewIdentity("east", k, "node-a", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := NewVerifier(Cluster{ID: "east", PublicKey: pub(k)})
	tag := id.Cert.TagValue()
	if len(tag) > 160 {
		t.Errorf("tag value is %d bytes, want it small for serf's 512-byte tag limit", len(tag))
	}
	c, err := ParseTagValue("east", "node-a", tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(c, time.Now()); err != nil {
		t.Fatalf("round-tripped tag cert: %v", err)
	}
	if c2, _ := ParseTagValue("east", "node-b", tag); v.Verify(c2, time.Now()) == nil {
		t.Fatal("a tag cert copied onto another member name verified")
	}
	bin, err := id.Cert.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var c3 Certificate
	if err := c3.UnmarshalBinary(bin); err != nil || c3.Node != "node-a" || v.Verify(c3, time.Now()) != nil {
		t.Fatalf("binary round trip: %v %+v", err, c3)
	}
	for _, bad := range [][]byte{nil, {5}, bin[:len(bin)-1], append([]byte{200}, bin...)} {
		var c Certificate
		if c.UnmarshalBinary(bad) == nil {
			t.Errorf("UnmarshalBinary(%x) accepted", bad)
		}
	}
	if _, err := ParseTagValue("a", "b", "!!"); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad base64: %v", err)
	}
	pk, err := ParsePrivateKey(EncodePrivateKey(k))
	if err != nil || !pk.Equal(k) {
		t.Fatal("private key round trip")
	}
	pp, err := ParsePublicKey(EncodeKey(pub(k)))
	if err != nil || !pp.Equal(pub(k)) {
		t.Fatal("public key round trip")
	}
}

func TestAuthorised(t *testing.T) {
	v, err := NewVerifier(Cluster{ID: "east", PublicKey: pub(mustKey(t)), CIDRs: []netip.Prefix{
		netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/64")}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cluster, prefix string
		want            bool
	}{
		{"east", "10.244.0.0/16", true},
		{"east", "10.244.3.0/24", true},
		{"east", "10.96.0.10/32", true},
		{"east", "10.0.0.0/8", false}, // wider than allowed
		{"east", "10.245.0.0/24", false},
		{"east", "0.0.0.0/0", false},
		{"east", "fd00::/80", true},
		{"east", "fd01::/64", false},
		{"west", "10.244.0.0/24", false}, // untrusted cluster
	} {
		if got := v.Authorised(tc.cluster, netip.MustParsePrefix(tc.prefix)); got != tc.want {
			t.Errorf("Authorised(%s, %s) = %v, want %v", tc.cluster, tc.prefix, got, tc.want)
		}
	}
}

func TestNewVerifierRejects(t *testing.T) {
	k := pub(mustKey(t))
	for name, cs := range map[string][]Cluster{
		"no id":     {{PublicKey: k}},
		"no key":    {{ID: "a"}},
		"duplicate": {{ID: "a", PublicKey: k}, {ID: "a", PublicKey: k}},
	} {
		if _, err := NewVerifier(cs[0], cs[1:]...); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseGossipKeys(t *testing.T) {
	one := "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	for _, tc := range []struct {
		in   string
		n    int
		fail bool
	}{
		{one + "\n", 1, false},
		{`["` + one + `","` + one + `"]`, 2, false},
		{"", 0, true},
		{"c2hvcnQ=", 0, true},
		{"[not json", 0, true},
	} {
		keys, err := ParseGossipKeys(tc.in)
		if (err != nil) != tc.fail || len(keys) != tc.n {
			t.Errorf("ParseGossipKeys(%q) = %d keys, %v", tc.in, len(keys), err)
		}
	}
}

// Many agents racing to create the cluster key all end up with the same one.
func TestSecretSourceCreateIfAbsent(t *testing.T) {
	client := fake.NewClientset()
	src := SecretSource{Secrets: client.CoreV1().Secrets("kube-system")}
	ctx := context.Background()
	keys := make([]ed25519.PrivateKey, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := src.ClusterKey(ctx)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !k.Equal(keys[0]) {
			t.Fatal("two agents got different cluster keys")
		}
	}
	g1, err := src.GossipKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g2, _ := src.GossipKeys(ctx)
	if len(g1) != 1 || string(g1[0]) != string(g2[0]) || len(g1[0]) != GossipKeySize {
		t.Fatal("gossip key not stable")
	}
}

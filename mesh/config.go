package mesh

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/mesh/trust"
)

// ParsePrefixes parses a comma- or space-separated prefix list.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("prefix %q: %w", f, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// APIPaths are the local API paths HTTPHandler serves (the agent mounts the handler on
// each of them).
var APIPaths = []string{"/v1/members", "/v1/events", "/v1/mesh", "/v1/announcements"}

// TrustConfig is what an agent knows at start to build its trust material.
type TrustConfig struct {
	ClusterID string
	NodeName  string
	// Keys yields the cluster key and gossip keyring: trust.FileSource (edge mode) or
	// trust.SecretSource (Kubernetes, create-if-absent).
	Keys trust.KeySource
	// LocalCIDRs are what this cluster's nodes may announce (cluster-cidr, service-cidr).
	LocalCIDRs []netip.Prefix
	// Remotes are the validated remote-clusters entries (package config is their one
	// parser): pinned keys are trusted for their cidr, gossip addresses are join seeds.
	Remotes []config.RemoteCluster
	// CertValidity of the node certificate issued now (default 30 days).
	CertValidity time.Duration
	Now          time.Time
}

// Trust is the result of BuildTrust: everything Options needs about keys and peers.
type Trust struct {
	Identity   trust.Identity
	Verifier   *trust.Verifier
	GossipKeys [][]byte
	// Seeds are the remote clusters' gossip addresses.
	Seeds []string
	// ClusterPublicKey is the local cluster's public key (what remote clusters pin).
	ClusterPublicKey ed25519.PublicKey
}

// BuildTrust loads the keys, certifies a fresh node key, and trusts the local cluster and
// every remote cluster with a pinned public key.
func BuildTrust(ctx context.Context, c TrustConfig) (Trust, error) {
	if c.Now.IsZero() {
		c.Now = time.Now()
	}
	if c.CertValidity == 0 {
		c.CertValidity = 30 * 24 * time.Hour
	}
	ckey, err := c.Keys.ClusterKey(ctx)
	if err != nil {
		return Trust{}, err
	}
	gkeys, err := c.Keys.GossipKeys(ctx)
	if err != nil {
		return Trust{}, err
	}
	pub := ckey.Public().(ed25519.PublicKey)
	var remotes []trust.Cluster
	var seeds []string
	for _, r := range c.Remotes {
		if tc, ok := remoteTrust(r); ok {
			remotes = append(remotes, tc)
		}
		if r.Gossip != "" {
			seeds = append(seeds, r.Gossip)
		}
	}
	v, err := trust.NewVerifier(trust.Cluster{ID: c.ClusterID, PublicKey: pub, CIDRs: c.LocalCIDRs}, remotes...)
	if err != nil {
		return Trust{}, err
	}
	id, err := trust.NewIdentity(c.ClusterID, ckey, c.NodeName, c.Now, c.CertValidity)
	if err != nil {
		return Trust{}, err
	}
	return Trust{Identity: id, Verifier: v, GossipKeys: gkeys, Seeds: seeds, ClusterPublicKey: pub}, nil
}

// remoteTrust is the trusted-cluster entry of a remote cluster, or false when it pins no
// public key (it is then a join seed whose members are refused).
func remoteTrust(r config.RemoteCluster) (trust.Cluster, bool) {
	if len(r.PublicKey) != ed25519.PublicKeySize {
		return trust.Cluster{}, false
	}
	var cidrs []netip.Prefix
	if r.CIDR.IsValid() {
		cidrs = []netip.Prefix{r.CIDR}
	}
	return trust.Cluster{ID: r.ID, PublicKey: ed25519.PublicKey(r.PublicKey), CIDRs: cidrs}, true
}

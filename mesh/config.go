package mesh

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/mesh/trust"
)

// RemoteCluster is one entry of the ConfigMap's `remote-clusters` list
// (docs/CONTRACT.md): a pinned remote cluster.
type RemoteCluster struct {
	ID string `json:"id"`
	// Endpoint is the WireGuard endpoint host:port.
	Endpoint string `json:"endpoint"`
	// CIDR is what the remote cluster may announce (comma-separated if several).
	CIDR string `json:"cidr"`
	// Gossip is the Serf address; default: Endpoint's host on port 7946.
	Gossip string `json:"gossip,omitempty"`
	// PublicKey is the remote cluster's Ed25519 public key (base64). A remote without one
	// is a join seed but not trusted: its members are refused.
	PublicKey string   `json:"publicKey,omitempty"`
	Paths     []string `json:"paths,omitempty"`
}

// ParseRemoteClusters reads the YAML (or JSON) list.
func ParseRemoteClusters(b []byte) ([]RemoteCluster, error) {
	var rs []RemoteCluster
	if err := yaml.UnmarshalStrict(b, &rs); err != nil {
		return nil, fmt.Errorf("mesh: remote-clusters: %w", err)
	}
	for i, r := range rs {
		if r.ID == "" {
			return nil, fmt.Errorf("mesh: remote-clusters[%d]: no id", i)
		}
		if _, err := r.CIDRs(); err != nil {
			return nil, fmt.Errorf("mesh: remote-clusters[%d] (%s): %w", i, r.ID, err)
		}
		if _, err := r.GossipAddr(); err != nil {
			return nil, fmt.Errorf("mesh: remote-clusters[%d] (%s): %w", i, r.ID, err)
		}
	}
	return rs, nil
}

// CIDRs parses CIDR.
func (r RemoteCluster) CIDRs() ([]netip.Prefix, error) { return ParsePrefixes(r.CIDR) }

// GossipAddr is where to join the remote cluster's mesh ("" if neither gossip nor
// endpoint is set).
func (r RemoteCluster) GossipAddr() (string, error) {
	if r.Gossip != "" {
		if _, _, err := net.SplitHostPort(r.Gossip); err != nil {
			return net.JoinHostPort(r.Gossip, strconv.Itoa(DefaultGossipPort)), nil
		}
		return r.Gossip, nil
	}
	if r.Endpoint == "" {
		return "", nil
	}
	host, _, err := net.SplitHostPort(r.Endpoint)
	if err != nil {
		return "", fmt.Errorf("endpoint %q: %w", r.Endpoint, err)
	}
	return net.JoinHostPort(host, strconv.Itoa(DefaultGossipPort)), nil
}

// Trust returns the trusted-cluster entry, or false when no public key is pinned.
func (r RemoteCluster) Trust() (trust.Cluster, bool, error) {
	if r.PublicKey == "" {
		return trust.Cluster{}, false, nil
	}
	k, err := trust.ParsePublicKey(r.PublicKey)
	if err != nil {
		return trust.Cluster{}, false, fmt.Errorf("remote cluster %s: %w", r.ID, err)
	}
	cidrs, err := r.CIDRs()
	if err != nil {
		return trust.Cluster{}, false, err
	}
	return trust.Cluster{ID: r.ID, PublicKey: ed25519.PublicKey(k), CIDRs: cidrs}, true, nil
}

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
	Remotes    []RemoteCluster
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
		tc, ok, err := r.Trust()
		if err != nil {
			return Trust{}, err
		}
		if ok {
			remotes = append(remotes, tc)
		}
		if g, _ := r.GossipAddr(); g != "" {
			seeds = append(seeds, g)
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

// RemotesFromConfig converts the agent's validated remote-clusters entries (package
// config) to the mesh's form, so the agent can pass them to BuildTrust.
func RemotesFromConfig(rs []config.RemoteCluster) []RemoteCluster {
	out := make([]RemoteCluster, 0, len(rs))
	for _, r := range rs {
		m := RemoteCluster{ID: r.ID, Endpoint: r.Endpoint, Gossip: r.Gossip, Paths: r.Paths}
		if r.CIDR.IsValid() {
			m.CIDR = r.CIDR.String()
		}
		if len(r.PublicKey) == ed25519.PublicKeySize {
			m.PublicKey = trust.EncodeKey(ed25519.PublicKey(r.PublicKey))
		}
		out = append(out, m)
	}
	return out
}

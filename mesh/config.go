package mesh

import (
	"crypto/ed25519"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

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

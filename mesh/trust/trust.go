// Package trust is the mesh's trust model without a controller: a cluster Ed25519 key
// certifies each node's Ed25519 key, remote clusters are trusted by their pinned cluster
// public key, and a Verifier accepts a node's signature only when its certificate chains to
// one of those keys. Each cluster is also authorised for a set of CIDRs, so a verified node
// can still not announce prefixes outside its own cluster's ranges.
//
// The package is pure (no I/O besides the key sources in source.go); every check is
// table-tested.
package trust

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Typed errors a caller branches on (the announcement receiver maps them to rejection
// reasons).
var (
	// ErrUnknownSigner: the certificate's cluster is neither the local one nor pinned, or
	// its signature does not verify under that cluster's key.
	ErrUnknownSigner = errors.New("certificate not signed by a trusted cluster key")
	// ErrCertExpired: now is outside the certificate's validity window.
	ErrCertExpired = errors.New("certificate expired or not yet valid")
	// ErrMalformed: the encoding cannot be parsed.
	ErrMalformed = errors.New("malformed certificate")
)

// certDomain separates certificate signatures from every other signature made with the
// cluster key (announcements and beacons use their own domains with node keys).
const certDomain = "patronus-node-cert-v1\x00"

const certVersion = 1

// PublicKey is an Ed25519 public key (a distinct type from raw bytes so a node key and a
// signature cannot be swapped by accident).
type PublicKey = ed25519.PublicKey

// Certificate binds a node name and its public key to a cluster, signed by the cluster key.
type Certificate struct {
	Cluster   string
	Node      string
	NodeKey   ed25519.PublicKey
	NotBefore time.Time
	NotAfter  time.Time
	Signature []byte
}

// Issue certifies nodeKey for node in cluster with the cluster's private key.
func Issue(cluster string, clusterKey ed25519.PrivateKey, node string, nodeKey ed25519.PublicKey, notBefore, notAfter time.Time) (Certificate, error) {
	if cluster == "" || node == "" {
		return Certificate{}, errors.New("trust: certificate needs a cluster id and a node name")
	}
	if len(cluster) > 255 || len(node) > 255 {
		return Certificate{}, errors.New("trust: cluster id and node name are limited to 255 bytes")
	}
	if len(clusterKey) != ed25519.PrivateKeySize || len(nodeKey) != ed25519.PublicKeySize {
		return Certificate{}, errors.New("trust: bad key size")
	}
	c := Certificate{Cluster: cluster, Node: node, NodeKey: nodeKey,
		NotBefore: notBefore.Truncate(time.Second), NotAfter: notAfter.Truncate(time.Second)}
	c.Signature = ed25519.Sign(clusterKey, c.signedBytes())
	return c, nil
}

func (c Certificate) signedBytes() []byte {
	var b bytes.Buffer
	b.WriteString(certDomain)
	b.WriteByte(byte(len(c.Cluster)))
	b.WriteString(c.Cluster)
	b.WriteByte(byte(len(c.Node)))
	b.WriteString(c.Node)
	b.Write(c.NodeKey)
	binary.Write(&b, binary.BigEndian, c.NotBefore.Unix())
	binary.Write(&b, binary.BigEndian, c.NotAfter.Unix())
	return b.Bytes()
}

// compact is the encoding without cluster and node (which a serf member already carries
// in its name and cluster tag): version, key, validity, signature = 113 bytes, 151 in
// base64. Serf limits a member's tags to 512 bytes, so this matters.
func (c Certificate) compact() []byte {
	var b bytes.Buffer
	b.WriteByte(certVersion)
	b.Write(c.NodeKey)
	binary.Write(&b, binary.BigEndian, c.NotBefore.Unix())
	binary.Write(&b, binary.BigEndian, c.NotAfter.Unix())
	b.Write(c.Signature)
	return b.Bytes()
}

const compactLen = 1 + ed25519.PublicKeySize + 8 + 8 + ed25519.SignatureSize

func parseCompact(cluster, node string, p []byte) (Certificate, error) {
	if len(p) != compactLen || p[0] != certVersion {
		return Certificate{}, fmt.Errorf("%w: %d bytes, version %d", ErrMalformed, len(p), firstByte(p))
	}
	p = p[1:]
	c := Certificate{Cluster: cluster, Node: node}
	c.NodeKey = ed25519.PublicKey(bytes.Clone(p[:32]))
	c.NotBefore = time.Unix(int64(binary.BigEndian.Uint64(p[32:40])), 0)
	c.NotAfter = time.Unix(int64(binary.BigEndian.Uint64(p[40:48])), 0)
	c.Signature = bytes.Clone(p[48:])
	return c, nil
}

func firstByte(p []byte) int {
	if len(p) == 0 {
		return -1
	}
	return int(p[0])
}

// TagValue is the certificate as a serf tag value (compact, base64 without padding).
func (c Certificate) TagValue() string {
	return base64.RawStdEncoding.EncodeToString(c.compact())
}

// ParseTagValue reverses TagValue; cluster and node come from the member's tags and name.
func ParseTagValue(cluster, node, v string) (Certificate, error) {
	p, err := base64.RawStdEncoding.DecodeString(v)
	if err != nil {
		return Certificate{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return parseCompact(cluster, node, p)
}

// MarshalBinary is the full encoding: cluster and node length-prefixed, then compact.
func (c Certificate) MarshalBinary() ([]byte, error) {
	if len(c.Cluster) > 255 || len(c.Node) > 255 {
		return nil, errors.New("trust: cluster id or node name too long")
	}
	var b bytes.Buffer
	b.WriteByte(byte(len(c.Cluster)))
	b.WriteString(c.Cluster)
	b.WriteByte(byte(len(c.Node)))
	b.WriteString(c.Node)
	b.Write(c.compact())
	return b.Bytes(), nil
}

// UnmarshalBinary reverses MarshalBinary.
func (c *Certificate) UnmarshalBinary(p []byte) error {
	readStr := func() (string, error) {
		if len(p) < 1 || len(p) < 1+int(p[0]) {
			return "", ErrMalformed
		}
		s := string(p[1 : 1+int(p[0])])
		p = p[1+int(p[0]):]
		return s, nil
	}
	cluster, err := readStr()
	if err != nil {
		return err
	}
	node, err := readStr()
	if err != nil {
		return err
	}
	parsed, err := parseCompact(cluster, node, p)
	if err != nil {
		return err
	}
	*c = parsed
	return nil
}

// Cluster is a trusted cluster: its id, its public signing key and the CIDRs its nodes may
// announce (pod and service CIDRs for the local cluster, the pinned `cidr` for a remote).
type Cluster struct {
	ID        string
	PublicKey ed25519.PublicKey
	CIDRs     []netip.Prefix
}

// Verifier checks certificates against the local cluster key and the pinned remote keys.
// It is immutable after construction and safe for concurrent use.
type Verifier struct {
	local    string
	clusters map[string]Cluster
}

// NewVerifier trusts local and every pinned remote cluster. Two entries with one id are
// an error (a pinned remote cannot override the local key).
func NewVerifier(local Cluster, remotes ...Cluster) (*Verifier, error) {
	v := &Verifier{local: local.ID, clusters: map[string]Cluster{}}
	for i, c := range append([]Cluster{local}, remotes...) {
		if c.ID == "" {
			return nil, fmt.Errorf("trust: cluster %d has no id", i)
		}
		if len(c.PublicKey) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("trust: cluster %q has no valid public key", c.ID)
		}
		if _, dup := v.clusters[c.ID]; dup {
			return nil, fmt.Errorf("trust: cluster %q listed twice", c.ID)
		}
		for j, p := range c.CIDRs {
			c.CIDRs[j] = p.Masked()
		}
		v.clusters[c.ID] = c
	}
	return v, nil
}

// LocalCluster is the id of the cluster this verifier belongs to.
func (v *Verifier) LocalCluster() string { return v.local }

// Trusted reports whether cluster is the local or a pinned cluster.
func (v *Verifier) Trusted(cluster string) bool { _, ok := v.clusters[cluster]; return ok }

// Verify checks that c is signed by its cluster's trusted key and valid at now.
func (v *Verifier) Verify(c Certificate, now time.Time) error {
	cl, ok := v.clusters[c.Cluster]
	if !ok {
		return fmt.Errorf("%w: cluster %q is not trusted", ErrUnknownSigner, c.Cluster)
	}
	if len(c.NodeKey) != ed25519.PublicKeySize || len(c.Signature) != ed25519.SignatureSize {
		return ErrMalformed
	}
	if !ed25519.Verify(cl.PublicKey, c.signedBytes(), c.Signature) {
		return fmt.Errorf("%w: certificate of %s/%s", ErrUnknownSigner, c.Cluster, c.Node)
	}
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return fmt.Errorf("%w: %s/%s valid %s..%s", ErrCertExpired, c.Cluster, c.Node,
			c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Authorised reports whether cluster may announce p: p must lie within one of the
// cluster's CIDRs (equal or more specific).
func (v *Verifier) Authorised(cluster string, p netip.Prefix) bool {
	cl, ok := v.clusters[cluster]
	if !ok || !p.IsValid() {
		return false
	}
	p = p.Masked()
	for _, allowed := range cl.CIDRs {
		if allowed.Addr().Is4() == p.Addr().Is4() && allowed.Bits() <= p.Bits() && allowed.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// AuthorisedAddr reports whether addr lies in one of cluster's CIDRs.
func (v *Verifier) AuthorisedAddr(cluster string, addr netip.Addr) bool {
	return v.Authorised(cluster, netip.PrefixFrom(addr, addr.BitLen()))
}

// Identity is what a node signs with: its private key and its certificate.
type Identity struct {
	Key  ed25519.PrivateKey
	Cert Certificate
}

// NewIdentity generates a node key and certifies it with the cluster key for validity.
func NewIdentity(cluster string, clusterKey ed25519.PrivateKey, node string, now time.Time, validity time.Duration) (Identity, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Identity{}, fmt.Errorf("trust: generate node key: %w", err)
	}
	// Allow for clock skew between nodes: a certificate valid from a minute ago.
	cert, err := Issue(cluster, clusterKey, node, pub, now.Add(-time.Minute), now.Add(validity))
	if err != nil {
		return Identity{}, err
	}
	return Identity{Key: priv, Cert: cert}, nil
}

// EncodeKey is the text form of a public key (standard base64, like WireGuard keys).
func EncodeKey(k ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(k) }

// ParsePublicKey reads the text form of a public key.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("trust: public key must be %d bytes in base64", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// EncodePrivateKey is the text form of a private key: the 32-byte seed in base64.
func EncodePrivateKey(k ed25519.PrivateKey) string {
	return base64.StdEncoding.EncodeToString(k.Seed())
}

// ParsePrivateKey reads the text form of a private key.
func ParsePrivateKey(s string) (ed25519.PrivateKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.SeedSize {
		return nil, fmt.Errorf("trust: private key must be a %d-byte seed in base64", ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(b), nil
}

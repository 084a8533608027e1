package trust

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Secret names and data keys (docs/CONTRACT.md, "Cluster identity").
const (
	ClusterKeySecret = "patronus-cluster-key"
	GossipKeySecret  = "patronus-gossip-key"
	// SecretPrivateKey holds the 32-byte Ed25519 seed, SecretPublicKey the public key.
	SecretPrivateKey = "private-key"
	SecretPublicKey  = "public-key"
	// SecretGossipKey holds the 32-byte AES-256 gossip key (serf keyring primary).
	SecretGossipKey = "key"
)

// GossipKeySize is the key length used for gossip encryption (AES-256).
const GossipKeySize = 32

// KeySource yields the cluster signing key and the gossip keyring. Implementations:
// FileSource (edge mode, no API server) and SecretSource (Kubernetes).
type KeySource interface {
	// ClusterKey returns the cluster's private signing key.
	ClusterKey(ctx context.Context) (ed25519.PrivateKey, error)
	// GossipKeys returns the gossip keyring, primary key first; nil means no encryption.
	GossipKeys(ctx context.Context) ([][]byte, error)
}

// FileSource reads keys from files: the cluster key as a base64 seed (ReadClusterKeyFile)
// and the gossip keyring as one base64 key or a JSON list of them (serf's keyring file
// format). An empty GossipKeyFile means gossip is not encrypted.
type FileSource struct {
	ClusterKeyFile string
	GossipKeyFile  string
}

// ClusterKey implements KeySource.
func (f FileSource) ClusterKey(context.Context) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(f.ClusterKeyFile)
	if err != nil {
		return nil, fmt.Errorf("trust: read cluster key: %w", err)
	}
	k, err := ParsePrivateKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("trust: %s: %w", f.ClusterKeyFile, err)
	}
	return k, nil
}

// GossipKeys implements KeySource.
func (f FileSource) GossipKeys(context.Context) ([][]byte, error) {
	if f.GossipKeyFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(f.GossipKeyFile)
	if err != nil {
		return nil, fmt.Errorf("trust: read gossip key: %w", err)
	}
	keys, err := ParseGossipKeys(string(b))
	if err != nil {
		return nil, fmt.Errorf("trust: %s: %w", f.GossipKeyFile, err)
	}
	return keys, nil
}

// ParseGossipKeys reads one base64 key, or a JSON list of base64 keys (primary first).
func ParseGossipKeys(s string) ([][]byte, error) {
	s = strings.TrimSpace(s)
	var texts []string
	if strings.HasPrefix(s, "[") {
		if err := json.Unmarshal([]byte(s), &texts); err != nil {
			return nil, fmt.Errorf("gossip keyring: %w", err)
		}
	} else {
		texts = strings.Fields(s)
	}
	if len(texts) == 0 {
		return nil, errors.New("gossip keyring is empty")
	}
	keys := make([][]byte, 0, len(texts))
	for _, t := range texts {
		k, err := base64.StdEncoding.DecodeString(t)
		if err != nil || len(k) != GossipKeySize {
			return nil, fmt.Errorf("gossip key must be %d bytes in base64", GossipKeySize)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// GenerateClusterKey makes a new cluster signing key.
func GenerateClusterKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("trust: generate cluster key: %w", err)
	}
	return priv, nil
}

// GenerateGossipKey makes a new random gossip key.
func GenerateGossipKey() ([]byte, error) {
	k := make([]byte, GossipKeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("trust: generate gossip key: %w", err)
	}
	return k, nil
}

// SecretAPI is the part of client-go's SecretInterface the Secret source uses
// (clientset.CoreV1().Secrets(namespace) satisfies it).
type SecretAPI interface {
	Create(ctx context.Context, s *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error)
}

// SecretSource keeps the keys in Kubernetes Secrets of the agent's namespace, created by
// the first agent that finds them absent. Creation relies on the API server's optimistic
// concurrency: every agent tries Create with its own fresh key; exactly one wins, the others
// get AlreadyExists and read the winner's Secret. There are never two keys.
type SecretSource struct {
	Secrets SecretAPI
}

// ClusterKey implements KeySource.
func (s SecretSource) ClusterKey(ctx context.Context) (ed25519.PrivateKey, error) {
	fresh, err := GenerateClusterKey()
	if err != nil {
		return nil, err
	}
	data, err := s.ensure(ctx, ClusterKeySecret, map[string][]byte{
		SecretPrivateKey: fresh.Seed(),
		SecretPublicKey:  []byte(EncodeKey(fresh.Public().(ed25519.PublicKey))),
	})
	if err != nil {
		return nil, err
	}
	seed := data[SecretPrivateKey]
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("trust: Secret %s: %q is not a %d-byte seed", ClusterKeySecret, SecretPrivateKey, ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// GossipKeys implements KeySource.
func (s SecretSource) GossipKeys(ctx context.Context) ([][]byte, error) {
	fresh, err := GenerateGossipKey()
	if err != nil {
		return nil, err
	}
	data, err := s.ensure(ctx, GossipKeySecret, map[string][]byte{SecretGossipKey: fresh})
	if err != nil {
		return nil, err
	}
	k := data[SecretGossipKey]
	if len(k) != GossipKeySize {
		return nil, fmt.Errorf("trust: Secret %s: %q is not a %d-byte key", GossipKeySecret, SecretGossipKey, GossipKeySize)
	}
	return [][]byte{k}, nil
}

// ensure creates the Secret name with data unless it exists, and returns the data of the
// Secret that exists afterwards (ours or the one that won the race).
func (s SecretSource) ensure(ctx context.Context, name string, data map[string][]byte) (map[string][]byte, error) {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "patronus"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       data,
	}
	created, err := s.Secrets.Create(ctx, sec, metav1.CreateOptions{})
	if err == nil {
		return created.Data, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("trust: create Secret %s: %w", name, err)
	}
	existing, err := s.Secrets.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("trust: get existing Secret %s: %w", name, err)
	}
	return existing.Data, nil
}

// EncodeGossipKey is the text form of a gossip key (base64, as serf keygen prints it).
func EncodeGossipKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

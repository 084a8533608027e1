// Package beacon is the mesh's zero-configuration discovery: each agent periodically
// multicasts a signed beacon (cluster id, node name, gossip address) on the underlay
// interfaces, and hands every valid beacon of another node to a callback (the mesh node
// joins Serf through it). Beacons that do not parse, are unsigned, signed by an untrusted
// key or too old are ignored and counted.
//
// Sealing and opening are pure (tested without a network); Beaconer does the socket work
// with golang.org/x/net/ipv4, choosing interface and TTL explicitly.
package beacon

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/patronus/patronus/mesh/trust"
)

// Beacon is what an agent multicasts.
type Beacon struct {
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	// Gossip is the Serf address host:port. An empty or unspecified host means "the
	// address this packet came from" (an agent bound to 0.0.0.0 does not know which of its
	// addresses its peers reach).
	Gossip string `json:"gossip"`
	// Time in Unix milliseconds bounds how long a captured beacon can be replayed.
	Time int64 `json:"t"`
}

// Reason is why a beacon was ignored (label of patronus_mesh_beacons_ignored_total).
type Reason string

// Ignore reasons.
const (
	ReasonMalformed     Reason = "malformed"
	ReasonUnsigned      Reason = "unsigned"
	ReasonUnknownSigner Reason = "unknown_signer"
	ReasonBadSignature  Reason = "bad_signature"
	ReasonMismatch      Reason = "mismatch" // body names another node than the certificate
	ReasonStale         Reason = "stale"
)

// Reasons lists every ignore reason.
var Reasons = []Reason{ReasonMalformed, ReasonUnsigned, ReasonUnknownSigner, ReasonBadSignature, ReasonMismatch, ReasonStale}

// IgnoreError says why a beacon was ignored.
type IgnoreError struct {
	Reason Reason
	Err    error
}

func (e *IgnoreError) Error() string { return fmt.Sprintf("beacon ignored (%s): %v", e.Reason, e.Err) }
func (e *IgnoreError) Unwrap() error { return e.Err }

// ReasonOf extracts the ignore reason of err, or "".
func ReasonOf(err error) Reason {
	var ie *IgnoreError
	if errors.As(err, &ie) {
		return ie.Reason
	}
	return ""
}

// MaxSkew is how far a beacon's time may be from the receiver's clock.
const MaxSkew = 2 * time.Minute

const domain = "patronus-beacon-v1\x00"

type envelope struct {
	Body []byte `json:"b"`
	Cert []byte `json:"c,omitempty"`
	Sig  []byte `json:"s,omitempty"`
}

// Seal signs b with the node identity.
func Seal(b Beacon, id trust.Identity) ([]byte, error) {
	body, err := json.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("beacon: encode: %w", err)
	}
	cert, err := id.Cert.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return json.Marshal(envelope{Body: body, Cert: cert, Sig: ed25519.Sign(id.Key, append([]byte(domain), body...))})
}

// Open verifies a received beacon against the trusted clusters.
func Open(wire []byte, v *trust.Verifier, now time.Time) (Beacon, error) {
	var env envelope
	var b Beacon
	if err := json.Unmarshal(wire, &env); err != nil {
		return b, &IgnoreError{ReasonMalformed, err}
	}
	if err := json.Unmarshal(env.Body, &b); err != nil {
		return b, &IgnoreError{ReasonMalformed, err}
	}
	if len(env.Sig) == 0 || len(env.Cert) == 0 {
		return b, &IgnoreError{ReasonUnsigned, errors.New("no signature or certificate")}
	}
	var cert trust.Certificate
	if err := cert.UnmarshalBinary(env.Cert); err != nil {
		return b, &IgnoreError{ReasonMalformed, err}
	}
	if err := v.Verify(cert, now); err != nil {
		return b, &IgnoreError{ReasonUnknownSigner, err}
	}
	if !ed25519.Verify(cert.NodeKey, append([]byte(domain), env.Body...), env.Sig) {
		return b, &IgnoreError{ReasonBadSignature, errors.New("signature does not verify")}
	}
	if b.Cluster != cert.Cluster || b.Node != cert.Node {
		return b, &IgnoreError{ReasonMismatch, fmt.Errorf("beacon names %s/%s, certificate %s/%s", b.Cluster, b.Node, cert.Cluster, cert.Node)}
	}
	if d := now.Sub(time.UnixMilli(b.Time)); d > MaxSkew || d < -MaxSkew {
		return b, &IgnoreError{ReasonStale, fmt.Errorf("beacon time is %s off", d)}
	}
	return b, nil
}

// Package announce holds the mesh's signed announcements: the prefixes a cluster owns, the
// services it exports and link-probe summaries. An origin node signs each announcement
// with its certified node key; a Receiver accepts one only when the certificate chains to a
// trusted cluster key, the signature verifies, the sequence number is newer than the last
// accepted one for the same slot, it has not expired, and every prefix or endpoint lies in
// the CIDRs its cluster is authorised for. Rejections are counted by reason and logged once
// per (origin, reason). Accepted announcements live in a State until they expire, are
// replaced, or their origin leaves.
//
// The package is pure: no network, no clock except the injected one.
package announce

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/patronus/patronus/mesh/trust"
)

// Kind is what an announcement is about.
type Kind string

// Announcement kinds.
const (
	KindPrefix  Kind = "prefix"  // a cluster's pod CIDRs and service CIDR, as seen from one node
	KindService Kind = "service" // an exported service (multi-cluster services)
	KindProbe   Kind = "probe"   // a summary of the origin's link probes
	// KindTunnel is a gateway's WireGuard public key and underlay endpoints, with the pod
	// CIDRs (Prefixes) reachable through it: what peers program their tunnel from.
	KindTunnel Kind = "tunnel"
	// KindPodBlock is a node's claim on its pod block inside its cluster's CIDR (Prefixes:
	// exactly the block; Claimed: when it was claimed, the seniority that decides between
	// two claims of one block: oldest, then lowest node name). Node, when set, is the node
	// the claim is about, announced on its behalf by the origin (a gateway relaying the
	// API server's claims of nodes of its cluster that run no mesh).
	KindPodBlock Kind = "podblock"
)

// Announcement is one signed statement by an origin node. Origin, Cluster, Seq and Expires
// are set by the Signer.
type Announcement struct {
	Kind    Kind   `json:"kind"`
	Origin  string `json:"origin"`
	Cluster string `json:"cluster"`
	Seq     uint64 `json:"seq"`
	// Expires is in Unix milliseconds (compact on the wire; JSON times are long).
	Expires int64 `json:"exp"`
	// Withdraw removes the slot (for example a service no longer exported).
	Withdraw bool `json:"withdraw,omitempty"`

	Prefixes []netip.Prefix `json:"prefixes,omitempty"`
	Service  *Service       `json:"service,omitempty"`
	Probe    *Probe         `json:"probe,omitempty"`
	Tunnel   *Tunnel        `json:"tunnel,omitempty"`
	// Claimed is when a KindPodBlock claim was made, in Unix milliseconds.
	Claimed int64 `json:"claimed,omitempty"`
	// Node is the subject of a KindPodBlock claim announced on its behalf by Origin, a
	// node of the same cluster ("" = Origin's own claim). It is part of the slot, so each
	// node's claim has its own; the signature is Origin's, and the receiver's checks (the
	// certificate chains to the cluster key, the block lies in that cluster's CIDRs) bound
	// it: a node can speak only for blocks of its own cluster.
	Node string `json:"node,omitempty"`
}

// Tunnel is a gateway's WireGuard identity. A key rotation is a new announcement in the
// same slot (the newer sequence replaces the old key).
type Tunnel struct {
	PublicKey string           `json:"pub"` // WireGuard public key, base64 (32 bytes)
	Endpoints []netip.AddrPort `json:"eps"` // underlay endpoints, preferred first
}

// Service is an exported service.
type Service struct {
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	Type      string       `json:"type,omitempty"` // ClusterSetIP | Headless
	Ports     []Port       `json:"ports,omitempty"`
	Endpoints []netip.Addr `json:"endpoints,omitempty"`
}

// Port is a service port.
type Port struct {
	Name     string `json:"name,omitempty"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol,omitempty"`
}

// Probe summarises the origin's measurements of its paths.
type Probe struct {
	Links []Link `json:"links"`
}

// Link is one measured path from the origin to a peer.
type Link struct {
	Peer          string `json:"peer"`
	Path          string `json:"path,omitempty"`
	RTTMicros     uint32 `json:"rtt_us"`
	JitterMicros  uint32 `json:"jitter_us,omitempty"`
	LossPPM       uint32 `json:"loss_ppm,omitempty"`
	BandwidthKbps uint32 `json:"bw_kbps,omitempty"`
}

// ExpiresAt is Expires as a time.
func (a Announcement) ExpiresAt() time.Time { return time.UnixMilli(a.Expires) }

// Subject is the node an announcement is about: Node for a claim made on another node's
// behalf, else Origin. Readers of claims key them by (Cluster, Subject()).
func (a Announcement) Subject() string {
	if a.Node != "" {
		return a.Node
	}
	return a.Origin
}

// OnBehalf says a was signed by Origin about another node (Node).
func (a Announcement) OnBehalf() bool { return a.Node != "" }

// Slot identifies what an announcement replaces: a newer announcement for the same slot
// supersedes the older one.
func (a Announcement) Slot() string {
	subject := ""
	switch {
	case a.Kind == KindService && a.Service != nil:
		subject = a.Service.Namespace + "/" + a.Service.Name
	case a.Kind == KindPodBlock && a.Node != "":
		subject = a.Node
	}
	return a.Cluster + "/" + a.Origin + "/" + string(a.Kind) + "/" + subject
}

func (a Announcement) validate() error {
	if a.Node != "" {
		switch {
		case a.Kind != KindPodBlock:
			return fmt.Errorf("%s announcement with a subject node (only pod block claims have one)", a.Kind)
		case a.Node == a.Origin:
			// One slot per claim: a node's own claim leaves Node empty.
			return errors.New("pod block claim on behalf of its own origin")
		case len(a.Node) > maxNodeName:
			return errors.New("pod block claim subject node name too long")
		}
	}
	switch a.Kind {
	case KindPrefix:
		if !a.Withdraw && len(a.Prefixes) == 0 {
			return errors.New("prefix announcement without prefixes")
		}
		for _, p := range a.Prefixes {
			if !p.IsValid() {
				return errors.New("invalid prefix")
			}
		}
	case KindService:
		if a.Service == nil || a.Service.Namespace == "" || a.Service.Name == "" {
			return errors.New("service announcement without namespace/name")
		}
	case KindProbe:
		if !a.Withdraw && a.Probe == nil {
			return errors.New("probe announcement without links")
		}
	case KindTunnel:
		if a.Withdraw {
			break
		}
		if a.Tunnel == nil || len(a.Prefixes) == 0 {
			return errors.New("tunnel announcement without key or prefixes")
		}
		if k, err := base64.StdEncoding.DecodeString(a.Tunnel.PublicKey); err != nil || len(k) != 32 {
			return errors.New("tunnel announcement with an invalid WireGuard public key")
		}
		for _, p := range a.Prefixes {
			if !p.IsValid() {
				return errors.New("invalid prefix")
			}
		}
		for _, ep := range a.Tunnel.Endpoints {
			if !ep.IsValid() || ep.Port() == 0 {
				return errors.New("invalid tunnel endpoint")
			}
		}
	case KindPodBlock:
		if a.Withdraw {
			break
		}
		if len(a.Prefixes) != 1 || !a.Prefixes[0].IsValid() || a.Prefixes[0] != a.Prefixes[0].Masked() {
			return errors.New("pod block announcement without exactly one masked block")
		}
		if a.Claimed <= 0 {
			return errors.New("pod block announcement without a claim time")
		}
	default:
		return fmt.Errorf("unknown kind %q", a.Kind)
	}
	return nil
}

// maxNodeName is the longest Node name (a Kubernetes object name, a DNS subdomain).
const maxNodeName = 253

// MaxWireSize bounds an encoded announcement: it travels as a serf user event inside one
// gossip packet (memberlist packs broadcasts into ~1400-byte UDP packets).
const MaxWireSize = 1100

const signDomain = "patronus-announce-v1\x00"

// envelope is the wire form: the body exactly as signed, the full certificate, the
// signature over signDomain+body.
type envelope struct {
	Body []byte `json:"b"`
	Cert []byte `json:"c"`
	Sig  []byte `json:"s"`
}

// Signer signs a node's announcements with a strictly increasing sequence number. The
// number is derived from the clock (and never repeats within a process), so a restarted
// node's announcements are newer than those it made before without any persisted counter.
type Signer struct {
	id  trust.Identity
	now func() time.Time

	mu  sync.Mutex
	seq uint64
}

// NewSigner signs with id; now may be nil (time.Now).
func NewSigner(id trust.Identity, now func() time.Time) *Signer {
	if now == nil {
		now = time.Now
	}
	return &Signer{id: id, now: now}
}

// Sign fills in origin, cluster, sequence and expiry (now+ttl) and returns the wire bytes
// and the completed announcement.
func (s *Signer) Sign(a Announcement, ttl time.Duration) ([]byte, Announcement, error) {
	s.mu.Lock()
	now := s.now()
	seq := uint64(now.UnixNano())
	if seq <= s.seq {
		seq = s.seq + 1
	}
	s.seq = seq
	s.mu.Unlock()
	a.Origin, a.Cluster, a.Seq = s.id.Cert.Node, s.id.Cert.Cluster, seq
	a.Expires = now.Add(ttl).UnixMilli()
	if err := a.validate(); err != nil {
		return nil, a, fmt.Errorf("announce: %w", err)
	}
	wire, err := Seal(a, s.id)
	if err != nil {
		return nil, a, err
	}
	if len(wire) > MaxWireSize {
		return nil, a, fmt.Errorf("announce: %s announcement is %d bytes, more than %d: split it", a.Kind, len(wire), MaxWireSize)
	}
	return wire, a, nil
}

// Seal encodes and signs a as is (no sequence or expiry handling); Signer.Sign is the
// normal way. Exposed for tests that must forge or replay.
func Seal(a Announcement, id trust.Identity) ([]byte, error) {
	body, err := json.Marshal(a)
	if err != nil {
		return nil, fmt.Errorf("announce: encode: %w", err)
	}
	cert, err := id.Cert.MarshalBinary()
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(id.Key, append([]byte(signDomain), body...))
	return json.Marshal(envelope{Body: body, Cert: cert, Sig: sig})
}

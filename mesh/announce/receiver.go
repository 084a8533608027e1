package announce

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/patronus/patronus/mesh/trust"
)

// Reason is why an announcement was rejected (the `reason` label of
// patronus_mesh_announcements_rejected_total).
type Reason string

// Rejection reasons.
const (
	ReasonMalformed          Reason = "malformed"
	ReasonUnknownSigner      Reason = "unknown_signer"
	ReasonBadCertificate     Reason = "bad_certificate" // expired or not yet valid
	ReasonBadSignature       Reason = "bad_signature"
	ReasonOriginMismatch     Reason = "origin_mismatch" // body names another node than the certificate
	ReasonReplay             Reason = "replay"
	ReasonExpired            Reason = "expired"
	ReasonUnauthorisedPrefix Reason = "unauthorised_prefix"
)

// Reasons lists every reason (the counter is initialised for all, so dashboards see 0s).
var Reasons = []Reason{ReasonMalformed, ReasonUnknownSigner, ReasonBadCertificate, ReasonBadSignature,
	ReasonOriginMismatch, ReasonReplay, ReasonExpired, ReasonUnauthorisedPrefix}

// RejectError is returned for a rejected announcement.
type RejectError struct {
	Reason Reason
	Origin string // as claimed; may be empty when the envelope did not parse
	Err    error
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("announcement from %q rejected (%s): %v", e.Origin, e.Reason, e.Err)
}
func (e *RejectError) Unwrap() error { return e.Err }

// ReasonOf extracts the rejection reason of err, or "".
func ReasonOf(err error) Reason {
	var re *RejectError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// ReceiverOptions configures a Receiver.
type ReceiverOptions struct {
	Verifier *trust.Verifier
	State    *State // where accepted announcements go; a new one if nil
	// Registerer gets the counters; nil means they are kept but not exported.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	Now        func() time.Time
}

// Receiver verifies incoming announcements and applies the accepted ones to its State.
type Receiver struct {
	v        *trust.Verifier
	state    *State
	log      *slog.Logger
	now      func() time.Time
	rejected *prometheus.CounterVec
	accepted prometheus.Counter

	mu      sync.Mutex
	lastSeq map[string]uint64  // slot -> last accepted sequence, kept after withdrawal
	logged  map[[2]string]bool // (origin, reason) already logged
}

// NewReceiver makes a receiver; it fails only if the counters cannot be registered.
func NewReceiver(o ReceiverOptions) (*Receiver, error) {
	if o.Verifier == nil {
		return nil, errors.New("announce: receiver needs a verifier")
	}
	r := &Receiver{v: o.Verifier, state: o.State, log: o.Logger, now: o.Now,
		lastSeq: map[string]uint64{}, logged: map[[2]string]bool{}}
	if r.state == nil {
		r.state = NewState()
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "patronus_mesh_announcements_rejected_total",
		Help: "Mesh announcements rejected, by reason.",
	}, []string{"reason"})
	r.accepted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "patronus_mesh_announcements_accepted_total",
		Help: "Mesh announcements verified and applied.",
	})
	for _, reason := range Reasons {
		r.rejected.WithLabelValues(string(reason))
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{r.rejected, r.accepted} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("announce: register metrics: %w", err)
			}
		}
	}
	return r, nil
}

// State is the receiver's state of accepted announcements.
func (r *Receiver) State() *State { return r.state }

// Rejected is the count of rejections for reason (for tests and status output).
func (r *Receiver) Rejected(reason Reason) float64 {
	var m dto.Metric
	_ = r.rejected.WithLabelValues(string(reason)).Write(&m)
	return m.GetCounter().GetValue()
}

// Receive verifies wire and, if it is acceptable, applies it to the state. It returns
// the announcement and nil, or a *RejectError.
func (r *Receiver) Receive(wire []byte) (Announcement, error) {
	a, err := r.verify(wire)
	if err != nil {
		var re *RejectError
		if errors.As(err, &re) {
			r.rejected.WithLabelValues(string(re.Reason)).Inc()
			r.logOnce(re)
		}
		return a, err
	}
	r.accepted.Inc()
	return a, nil
}

func (r *Receiver) logOnce(re *RejectError) {
	key := [2]string{re.Origin, string(re.Reason)}
	r.mu.Lock()
	first := !r.logged[key]
	r.logged[key] = true
	r.mu.Unlock()
	if first {
		r.log.Warn("mesh announcement rejected (logged once per origin and reason; see patronus_mesh_announcements_rejected_total)",
			"origin", re.Origin, "reason", re.Reason, "err", re.Err)
	}
}

func (r *Receiver) verify(wire []byte) (Announcement, error) {
	var env envelope
	if err := json.Unmarshal(wire, &env); err != nil {
		return Announcement{}, &RejectError{Reason: ReasonMalformed, Err: err}
	}
	var a Announcement
	if err := json.Unmarshal(env.Body, &a); err != nil {
		return a, &RejectError{Reason: ReasonMalformed, Err: err}
	}
	reject := func(reason Reason, err error) (Announcement, error) {
		return a, &RejectError{Reason: reason, Origin: a.Cluster + "/" + a.Origin, Err: err}
	}
	var cert trust.Certificate
	if err := cert.UnmarshalBinary(env.Cert); err != nil {
		return reject(ReasonMalformed, err)
	}
	now := r.now()
	if err := r.v.Verify(cert, now); err != nil {
		switch {
		case errors.Is(err, trust.ErrCertExpired):
			return reject(ReasonBadCertificate, err)
		case errors.Is(err, trust.ErrMalformed):
			return reject(ReasonMalformed, err)
		default:
			return reject(ReasonUnknownSigner, err)
		}
	}
	if !ed25519.Verify(cert.NodeKey, append([]byte(signDomain), env.Body...), env.Sig) {
		return reject(ReasonBadSignature, errors.New("signature does not verify under the certified node key"))
	}
	if a.Origin != cert.Node || a.Cluster != cert.Cluster {
		return reject(ReasonOriginMismatch, fmt.Errorf("body claims %s/%s, certificate is for %s/%s", a.Cluster, a.Origin, cert.Cluster, cert.Node))
	}
	if err := a.validate(); err != nil {
		return reject(ReasonMalformed, err)
	}
	if !now.Before(a.ExpiresAt()) {
		return reject(ReasonExpired, fmt.Errorf("expired at %s", a.ExpiresAt().UTC().Format(time.RFC3339)))
	}
	for _, p := range a.Prefixes {
		if !r.v.Authorised(a.Cluster, p) {
			return reject(ReasonUnauthorisedPrefix, fmt.Errorf("cluster %s is not authorised for %s", a.Cluster, p))
		}
	}
	if a.Service != nil {
		for _, ep := range a.Service.Endpoints {
			if !r.v.AuthorisedAddr(a.Cluster, ep) {
				return reject(ReasonUnauthorisedPrefix, fmt.Errorf("cluster %s is not authorised for endpoint %s", a.Cluster, ep))
			}
		}
	}
	// The replay check and the state update are one step, so two deliveries of the same
	// announcement racing each other cannot both be accepted.
	r.mu.Lock()
	defer r.mu.Unlock()
	slot := a.Slot()
	if last, ok := r.lastSeq[slot]; ok && a.Seq <= last {
		return reject(ReasonReplay, fmt.Errorf("sequence %d is not newer than %d", a.Seq, last))
	}
	r.lastSeq[slot] = a.Seq
	if a.Withdraw {
		r.state.remove(slot)
	} else {
		r.state.put(a)
	}
	return a, nil
}

// Restore loads announcements saved before a restart (State.List), keeping the unexpired
// ones and remembering their sequence numbers so replays of them stay rejected. They were
// verified when first received; the database is trusted like the binary.
func (r *Receiver) Restore(saved []Announcement) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range saved {
		if !now.Before(a.ExpiresAt()) {
			continue
		}
		if last, ok := r.lastSeq[a.Slot()]; ok && a.Seq <= last {
			continue
		}
		r.lastSeq[a.Slot()] = a.Seq
		r.state.put(a)
	}
}

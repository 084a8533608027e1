package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/dataplane/route"
	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/mesh/announce"
)

// HintsFromRemoteClusters converts the ConfigMap's remote-clusters entries (as package
// config parsed and validated them).
func HintsFromRemoteClusters(rcs []config.RemoteCluster) []Hint {
	var out []Hint
	for _, r := range rcs {
		var cidrs []netip.Prefix
		if r.CIDR.IsValid() {
			cidrs = []netip.Prefix{r.CIDR}
		}
		out = append(out, Hint{Cluster: r.ID, CIDRs: cidrs, Endpoint: r.Endpoint})
	}
	return out
}

// Routes is the route side the Reconciler drives (*route.Router).
type Routes interface {
	Set(route.Desired) (route.Result, error)
}

// ReconcilerOptions configures a Reconciler.
type ReconcilerOptions struct {
	// Device is the WireGuard device (nil on nodes that are not gateways).
	Device wg.Device
	Routes Routes
	// MSS, if set, is called with the tunnel devices to clamp (wg.EnsureMSSClamp bound to
	// the node's namespace).
	MSS    func(devs []string) error
	Logger *slog.Logger
}

// Status is the last reconcile's outcome (for `patronus status` and the local API).
type Status struct {
	Tunnels    []Tunnel    `json:"tunnels"`
	Conditions []Condition `json:"conditions,omitempty"`
	PublicKey  string      `json:"publicKey,omitempty"`
	Device     string      `json:"device,omitempty"`
	Applies    uint64      `json:"applies"` // WireGuard configuration changes so far
	Error      string      `json:"error,omitempty"`
	At         time.Time   `json:"at"`
}

// Reconciler applies plans. Safe for concurrent use; applies are serialised.
type Reconciler struct {
	o    ReconcilerOptions
	mu   sync.Mutex
	st   Status
	held bool // the last Configure held a peer's keepalive (wg.KeepaliveHold)
}

// holding reports whether the last reconcile held a new peer's keepalive: Run then
// reconciles again on its next poll, so the keepalive is on soon after the hold ends.
func (r *Reconciler) holding() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held
}

// NewReconciler makes a reconciler.
func NewReconciler(o ReconcilerOptions) *Reconciler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{o: o}
}

// Reconcile computes the plan for in and makes the device and routes match it. Calling
// it again with the same input changes nothing in the kernel.
func (r *Reconciler) Reconcile(in Input) (Plan, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.o.Device != nil {
		in.Device = r.o.Device.Name()
	}
	p := Compute(in)
	var errs []error
	if r.o.Device != nil {
		// Peers first: a route to a peer that does not exist yet would send packets into
		// the tunnel only to be dropped (no allowed IP), whereas a peer without a route is
		// harmless.
		ch, err := r.o.Device.Configure(p.Peers)
		if err != nil {
			errs = append(errs, err)
		}
		r.held = len(ch.Held) > 0
		if r.o.MSS != nil {
			if err := r.o.MSS([]string{r.o.Device.Name()}); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if r.o.Routes != nil {
		if _, err := r.o.Routes.Set(route.Desired{Routes: p.Routes}); err != nil {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)
	prev := r.st
	r.st = Status{Tunnels: p.Tunnels, Conditions: p.Conditions, At: time.Now()}
	if r.o.Device != nil {
		r.st.Device, r.st.Applies = r.o.Device.Name(), r.o.Device.Applies()
		if st, serr := r.o.Device.State(); serr == nil {
			r.st.PublicKey = st.PublicKey.String()
		}
	}
	if err != nil {
		r.st.Error = err.Error()
		r.o.Logger.Warn("tunnel reconcile", "err", err)
	}
	if !slices.Equal(prev.Conditions, p.Conditions) {
		for _, c := range p.Conditions {
			r.o.Logger.Warn("remote cluster condition", "remote", c.Cluster, "type", c.Type, "message", c.Message)
		}
	}
	return p, err
}

// Status returns the last reconcile's outcome.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.st
	s.Tunnels, s.Conditions = slices.Clone(s.Tunnels), slices.Clone(s.Conditions)
	return s
}

// StateSource is the verified mesh state (*announce.State).
type StateSource interface {
	List() []announce.Announcement
	Version() uint64
}

// Run reconciles whenever the mesh state's version moves (checked every poll, default
// 200ms) and at least every resync (default 30s), with base providing everything but
// the gateways (read from state). It returns when ctx ends.
func (r *Reconciler) Run(ctx context.Context, state StateSource, base func() Input, poll, resync time.Duration) error {
	if poll == 0 {
		poll = 200 * time.Millisecond
	}
	if resync == 0 {
		resync = 30 * time.Second
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	var last uint64
	var lastAt, retryAt time.Time
	first := true
	for {
		v := state.Version()
		now := time.Now()
		if first || v != last || now.Sub(lastAt) >= resync || (!retryAt.IsZero() && now.After(retryAt)) || r.holding() {
			in := base()
			in.Gateways = GatewaysFromAnnouncements(state.List(), in.LocalCluster)
			retryAt = time.Time{}
			if _, err := r.Reconcile(in); err != nil {
				// Retried after a second, not every poll: a missing device would otherwise
				// flood the log.
				retryAt = now.Add(time.Second)
				r.o.Logger.Warn("tunnel reconcile failed; retrying", "err", fmt.Errorf("tunnel: %w", err))
			}
			last, lastAt, first = v, now, false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

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

// PathEndpoint is the WireGuard endpoint of path pathID to remote cluster rc: path ids are
// "<cluster>/<host>" (probe.PathsFromConfig: one path per distinct host among rc's
// endpoint and paths), and the endpoint is the configured host:port with that host. false
// when the path is not one of rc's or its entry is not an IP address and port.
func PathEndpoint(rc config.RemoteCluster, pathID string) (netip.AddrPort, bool) {
	host, ok := strings.CutPrefix(pathID, rc.ID+"/")
	if !ok || host == "" {
		return netip.AddrPort{}, false
	}
	pes := rc.PathEntries()
	i := slices.IndexFunc(pes, func(p config.PathEntry) bool { return p.Host == host })
	if i < 0 {
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(pes[i].Entry)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// PathEndpoints maps the selected path of each remote cluster (selected: cluster -> path
// id) to its endpoint (PathEndpoint). Left out, so that their tunnel keeps the gateway's
// announced endpoint: clusters without a selection, whose path has no usable endpoint,
// or whose selected path is the primary one (the host of remote-clusters endpoint: the
// announced endpoint is what reaches it, and it is the one programmed without path
// selection, so an agent without probes and one with agree).
func PathEndpoints(rcs []config.RemoteCluster, selected map[string]string) map[string]netip.AddrPort {
	out := map[string]netip.AddrPort{}
	for _, rc := range rcs {
		id, ok := selected[rc.ID]
		if !ok {
			continue
		}
		if h, _, err := net.SplitHostPort(rc.Endpoint); err == nil && id == rc.ID+"/"+h {
			continue
		}
		if ep, ok := PathEndpoint(rc, id); ok {
			out[rc.ID] = ep
		}
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
	// PathDevices are the gateway's per-path devices by path index (≥ 1; see PathRefs):
	// Reconcile sets Input.PathDevices from them and configures each with its plan's
	// peers.
	PathDevices map[int]wg.Device
	Routes      Routes
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
	// pathEPs are the endpoints of the selected paths (SetPathEndpoints), used by Run
	// when its base input has none; kick wakes Run when they change.
	pathEPs map[string]netip.AddrPort
	kick    chan struct{}
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
	return &Reconciler{o: o, kick: make(chan struct{}, 1)}
}

// SetPathEndpoints sets the endpoint of the path each remote cluster's tunnel should
// follow (PathEndpoints; Input.PathEndpoints). When they differ from the last ones, Run
// reconciles at once, and the device diff writes only the peers whose endpoint moved.
// It reports whether they changed.
func (r *Reconciler) SetPathEndpoints(eps map[string]netip.AddrPort) bool {
	r.mu.Lock()
	old := r.pathEPs
	same := maps.Equal(old, eps)
	if !same {
		r.pathEPs = maps.Clone(eps)
	}
	r.mu.Unlock()
	if same {
		return false
	}
	for _, c := range slices.Sorted(maps.Keys(eps)) {
		if old[c] != eps[c] {
			r.o.Logger.Info("tunnel endpoint follows the path selection", "remote", c, "endpoint", eps[c].String())
		}
	}
	for _, c := range slices.Sorted(maps.Keys(old)) {
		if _, ok := eps[c]; !ok {
			r.o.Logger.Info("tunnel endpoint follows the path selection", "remote", c, "endpoint", "announced")
		}
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return true
}

func (r *Reconciler) pathEndpoints() map[string]netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.pathEPs)
}

// Reconcile computes the plan for in and makes the device and routes match it. Calling
// it again with the same input changes nothing in the kernel.
func (r *Reconciler) Reconcile(in Input) (Plan, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.o.Device != nil {
		in.Device = r.o.Device.Name()
	}
	in.PathDevices = nil
	for _, k := range slices.Sorted(maps.Keys(r.o.PathDevices)) {
		in.PathDevices = append(in.PathDevices, PathDevice{Index: k, Name: r.o.PathDevices[k].Name()})
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
		devs := []string{r.o.Device.Name()}
		for _, pd := range in.PathDevices {
			d := r.o.PathDevices[pd.Index]
			ch, err := d.Configure(p.PathPeers[pd.Name])
			if err != nil {
				errs = append(errs, err)
			}
			r.held = r.held || len(ch.Held) > 0
			devs = append(devs, pd.Name)
		}
		if r.o.MSS != nil {
			if err := r.o.MSS(devs); err != nil {
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

// PathHandshakes is, per path id of the last plan's per-path tunnels (index ≥ 1), when
// its peer last completed a handshake on the path's device (zero: never). A path whose
// remote end has no matching device (another version, --path-tunnels=false) never
// handshakes: its traffic would be lost, so callers steer nothing onto it.
func (r *Reconciler) PathHandshakes() map[string]time.Time {
	r.mu.Lock()
	tunnels := slices.Clone(r.st.Tunnels)
	devs := map[string]wg.Device{}
	for _, d := range r.o.PathDevices {
		devs[d.Name()] = d
	}
	r.mu.Unlock()
	out := map[string]time.Time{}
	states := map[string]*wgtypes.Device{}
	for _, t := range tunnels {
		for _, p := range t.Paths {
			d := devs[p.Device]
			if d == nil {
				continue // index 0: the main device
			}
			st, ok := states[p.Device]
			if !ok {
				st, _ = d.State()
				states[p.Device] = st
			}
			out[p.PathID] = time.Time{}
			if st == nil {
				continue
			}
			for _, peer := range st.Peers {
				if peer.PublicKey.String() == t.PublicKey {
					out[p.PathID] = peer.LastHandshakeTime
				}
			}
		}
	}
	return out
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
// 200ms), at once when SetPathEndpoints changed the endpoints, and at least every resync
// (default 30s), with base providing everything but the gateways (read from state) and,
// unless it sets them, the path endpoints. It returns when ctx ends.
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
	first, kicked := true, false
	for {
		v := state.Version()
		now := time.Now()
		if first || kicked || v != last || now.Sub(lastAt) >= resync || (!retryAt.IsZero() && now.After(retryAt)) || r.holding() {
			in := base()
			in.Gateways = GatewaysFromAnnouncements(state.List(), in.LocalCluster)
			if in.PathEndpoints == nil {
				in.PathEndpoints = r.pathEndpoints()
			}
			retryAt = time.Time{}
			if _, err := r.Reconcile(in); err != nil {
				// Retried after a second, not every poll: a missing device would otherwise
				// flood the log.
				retryAt = now.Add(time.Second)
				r.o.Logger.Warn("tunnel reconcile failed; retrying", "err", fmt.Errorf("tunnel: %w", err))
			}
			last, lastAt, first = v, now, false
		}
		kicked = false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.kick:
			kicked = true
		}
	}
}

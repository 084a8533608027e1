package paths

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// PathSpec describes one path: a local source (address and/or interface) to a remote
// probe endpoint of a destination cluster.
type PathSpec struct {
	ID string `json:"path_id"`
	// Src is the local side, as shown and used for the metrics' src label (an address or
	// an interface name).
	Src string `json:"src"`
	// Dst is the destination cluster id; selections are per destination.
	Dst string `json:"dst"`
	// Remote is the probe endpoint host:port.
	Remote string `json:"remote"`
	// BandwidthMbps is the configured or announced capacity (bulk selection).
	BandwidthMbps float64 `json:"bandwidth_mbps,omitempty"`
}

// ClassUse says that a requirement's traffic uses a path, since when.
type ClassUse struct {
	Class        Class     `json:"class"`
	MaxLatencyMs float64   `json:"max_latency_ms,omitempty"`
	Since        time.Time `json:"since"`
	Condition    string    `json:"condition,omitempty"`
}

// PathStatus is one row of `patronus paths`.
type PathStatus struct {
	PathSpec
	State     State      `json:"state"`
	Since     time.Time  `json:"state_since"`
	LatencyMs float64    `json:"latency_ms"`
	JitterMs  float64    `json:"jitter_ms"`
	Loss      float64    `json:"loss"`
	Score     float64    `json:"score"`
	L7        *L7        `json:"l7,omitempty"`
	Classes   []ClassUse `json:"classes"`
	Sent      uint64     `json:"probes_sent"`
	Lost      uint64     `json:"probes_lost"`
}

// SelectionStatus is a selection as served by the API.
type SelectionStatus struct {
	Dst          string    `json:"dst"`
	Class        Class     `json:"class"`
	MaxLatencyMs float64   `json:"max_latency_ms,omitempty"`
	PathID       string    `json:"path_id"`
	Since        time.Time `json:"since"`
	Reason       string    `json:"reason"`
	Condition    string    `json:"condition,omitempty"`
}

// RemoteLink is a remote gateway's own measurement of one of its paths towards this
// cluster, from its signed probe summary (mesh announcement kind probe): both ends see
// what the other measures.
type RemoteLink struct {
	// Cluster and Origin name the remote gateway; PathID is its id of the path.
	Cluster       string  `json:"cluster"`
	Origin        string  `json:"origin"`
	PathID        string  `json:"path_id"`
	LatencyMs     float64 `json:"latency_ms"`
	JitterMs      float64 `json:"jitter_ms"`
	Loss          float64 `json:"loss"`
	BandwidthMbps float64 `json:"bandwidth_mbps,omitempty"`
}

// Snapshot is the whole state: GET /v1/paths answers with it.
type Snapshot struct {
	Paths      []PathStatus      `json:"paths"`
	Selections []SelectionStatus `json:"selections"`
	// Remote lists the remote gateways' views of their paths to this cluster.
	Remote []RemoteLink `json:"remote,omitempty"`
}

// Selected is, per destination, the path selected for class without a max-latency: the
// path of the class's traffic that asks for no latency bound (a pod without one, or a
// sender that is no pod, in the default class). Destinations with no path selected (no
// path up) are left out.
func (s Snapshot) Selected(class Class) map[string]string {
	out := map[string]string{}
	for _, sel := range s.Selections {
		if sel.Class == class && sel.MaxLatencyMs == 0 && sel.PathID != "" {
			out[sel.Dst] = sel.PathID
		}
	}
	return out
}

type entry struct {
	spec PathSpec
	tr   *Tracker
	l7   *L7
	l7At time.Time
}

// Monitor holds the trackers of every path and the selections. It is safe for concurrent
// use; time is always passed in.
type Monitor struct {
	mu     sync.Mutex
	cfg    Config
	paths  map[string]*entry
	order  []string
	extra  []Requirement
	sel    *Selector
	remote []RemoteLink
}

// NewMonitor returns a monitor without paths.
func NewMonitor(cfg Config) *Monitor {
	cfg = cfg.WithDefaults()
	return &Monitor{cfg: cfg, paths: map[string]*entry{}, sel: NewSelector(cfg)}
}

// Config returns the effective configuration.
func (m *Monitor) Config() Config { return m.cfg }

// SetPaths makes the set of paths equal to specs; kept paths keep their history (and
// take the new spec), new ones start unknown at now.
func (m *Monitor) SetPaths(specs []PathSpec, now time.Time) error {
	seen := map[string]bool{}
	for _, s := range specs {
		if s.ID == "" || s.Dst == "" {
			return fmt.Errorf("path %+v: id and dst are required", s)
		}
		if seen[s.ID] {
			return fmt.Errorf("path %q listed twice", s.ID)
		}
		seen[s.ID] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.order = m.order[:0]
	for _, s := range specs {
		if e := m.paths[s.ID]; e != nil {
			e.spec = s
		} else {
			m.paths[s.ID] = &entry{spec: s, tr: NewTracker(m.cfg, now)}
		}
		m.order = append(m.order, s.ID)
	}
	for id := range m.paths {
		if !seen[id] {
			delete(m.paths, id)
		}
	}
	return nil
}

// SetRequirements sets the requirements selected for besides the three plain classes of
// every destination (pods with a max-latency).
func (m *Monitor) SetRequirements(reqs []Requirement) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.extra = slices.Clone(reqs)
}

// SetRemote replaces the remote gateways' views (shown in Snapshot, not used to select).
func (m *Monitor) SetRemote(links []RemoteLink) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.remote = slices.Clone(links)
}

// Sent records a probe sent on path id.
func (m *Monitor) Sent(id string, seq uint64, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.paths[id]; e != nil {
		e.tr.Sent(seq, at)
	}
}

// Reply records a probe answer on path id.
func (m *Monitor) Reply(id string, seq uint64, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.paths[id]; e != nil {
		e.tr.Reply(seq, now)
	}
}

// Timeout is path id's current probe timeout.
func (m *Monitor) Timeout(id string) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.paths[id]; e != nil {
		return e.tr.Timeout()
	}
	return m.cfg.MaxTimeout
}

// FeedL7 records L7 metrics for their path; an unknown path is an error naming path_id.
func (m *Monitor) FeedL7(l L7, now time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.paths[l.PathID]
	if e == nil {
		return &FieldError{"path_id", fmt.Errorf("unknown path %q", l.PathID)}
	}
	e.l7, e.l7At = &l, now
	return nil
}

func (m *Monitor) freshL7(e *entry, now time.Time) *L7 {
	if e.l7 == nil || now.Sub(e.l7At) > m.cfg.L7TTL {
		return nil
	}
	return e.l7
}

// requirements lists the plain classes for every destination, then the extra ones.
func (m *Monitor) requirements() []Requirement {
	var reqs []Requirement
	dsts := map[string]bool{}
	for _, id := range m.order {
		d := m.paths[id].spec.Dst
		if !dsts[d] {
			dsts[d] = true
			for _, c := range Classes {
				reqs = append(reqs, Requirement{Dst: d, Class: c})
			}
		}
	}
	for _, r := range m.extra {
		if dsts[r.Dst] && !slices.Contains(reqs, r) {
			reqs = append(reqs, r)
		}
	}
	return reqs
}

// Tick expires unanswered probes and re-evaluates every selection; it returns the
// selections that moved.
func (m *Monitor) Tick(now time.Time) []Change {
	m.mu.Lock()
	defer m.mu.Unlock()
	cands := map[string][]Candidate{}
	for _, id := range m.order {
		e := m.paths[id]
		e.tr.Expire(now)
		st := e.tr.Stats()
		cands[e.spec.Dst] = append(cands[e.spec.Dst], Candidate{ID: id, Stats: st,
			Score: Score(m.cfg.Weights, st, m.freshL7(e, now)), BandwidthMbps: e.spec.BandwidthMbps})
	}
	var changes []Change
	for _, r := range m.requirements() {
		if _, ch := m.sel.Update(now, r, cands[r.Dst]); ch != nil {
			changes = append(changes, *ch)
		}
	}
	return changes
}

// Selection returns the current selection for req.
func (m *Monitor) Selection(req Requirement) (Selection, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sel.Get(req)
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// Snapshot returns every path and selection as of the last Tick (L7 freshness at now).
func (m *Monitor) Snapshot(now time.Time) Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	snap := Snapshot{Paths: []PathStatus{}, Selections: []SelectionStatus{}, Remote: slices.Clone(m.remote)}
	byPath := map[string][]ClassUse{}
	for _, r := range m.requirements() {
		s, ok := m.sel.Get(r)
		if !ok {
			continue
		}
		maxMs := ms(r.MaxLatency)
		snap.Selections = append(snap.Selections, SelectionStatus{Dst: r.Dst, Class: r.Class, MaxLatencyMs: maxMs,
			PathID: s.PathID, Since: s.Since, Reason: s.Reason, Condition: s.Condition})
		if s.PathID != "" {
			byPath[s.PathID] = append(byPath[s.PathID], ClassUse{Class: r.Class, MaxLatencyMs: maxMs, Since: s.Since, Condition: s.Condition})
		}
	}
	for _, id := range m.order {
		e := m.paths[id]
		st := e.tr.Stats()
		l7 := m.freshL7(e, now)
		uses := byPath[id]
		if uses == nil {
			uses = []ClassUse{}
		}
		snap.Paths = append(snap.Paths, PathStatus{PathSpec: e.spec, State: st.State, Since: st.Since,
			LatencyMs: ms(st.SRTT), JitterMs: ms(st.Jitter), Loss: math.Round(st.Loss*1e4) / 1e4,
			Score: Score(m.cfg.Weights, st, l7), L7: l7, Classes: uses, Sent: st.Sent, Lost: st.Lost})
	}
	return snap
}

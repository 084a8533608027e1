package paths

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// Class is a pod's QoS class (annotation patronus.io/qos-class).
type Class string

// The QoS classes.
const (
	LatencySensitive Class = "latency-sensitive"
	Bulk             Class = "bulk"
	BestEffort       Class = "best-effort"
)

// Classes lists the classes in display order.
var Classes = []Class{LatencySensitive, Bulk, BestEffort}

// Requirement is what traffic to one destination cluster needs; one selection is kept
// per requirement. MaxLatency (0 = none) is the pod's patronus.io/max-latency-ms, compared
// with the path's smoothed round-trip time.
type Requirement struct {
	Dst        string        `json:"dst"`
	Class      Class         `json:"class"`
	MaxLatency time.Duration `json:"-"`
}

func (r Requirement) String() string {
	if r.MaxLatency > 0 {
		return fmt.Sprintf("%s/%s(max %v)", r.Dst, r.Class, r.MaxLatency)
	}
	return fmt.Sprintf("%s/%s", r.Dst, r.Class)
}

// Conditions reported on a selection.
const (
	// CondNoPathUp: no path to the destination answers; traffic has nowhere to go.
	CondNoPathUp = "NoPathUp"
	// CondNoPathMeetsMaxLatency: every path is slower than MaxLatency; the fastest is used.
	CondNoPathMeetsMaxLatency = "NoPathMeetsMaxLatency"
)

// Reasons for a selection change.
const (
	ReasonInitial  = "initial"  // first path chosen (or first after none was up)
	ReasonFailover = "failover" // the selected path went down: moved at once
	ReasonBound    = "bound"    // the selected path exceeds MaxLatency and another meets it
	ReasonBetter   = "better"   // a settled path beats the incumbent by the margin
	ReasonNoPath   = "no-path"  // every path is down
)

// Candidate is one path as the selector sees it.
type Candidate struct {
	ID            string
	Stats         Stats
	Score         float64
	BandwidthMbps float64
}

// Selection is the path chosen for a requirement.
type Selection struct {
	Requirement
	PathID    string    `json:"path_id"`
	Since     time.Time `json:"since"`
	Reason    string    `json:"reason"`
	Condition string    `json:"condition,omitempty"`
}

// Change is one move of a selection.
type Change struct {
	Requirement
	From, To string
	At       time.Time
	Reason   string
}

// Selector keeps one selection per requirement and moves it with hysteresis and hold-down.
// Not safe for concurrent use.
type Selector struct {
	cfg Config
	sel map[Requirement]*Selection
}

// NewSelector returns a selector with no selections.
func NewSelector(cfg Config) *Selector {
	return &Selector{cfg: cfg.WithDefaults(), sel: map[Requirement]*Selection{}}
}

// Get returns the current selection for req.
func (s *Selector) Get(req Requirement) (Selection, bool) {
	if p := s.sel[req]; p != nil {
		return *p, true
	}
	return Selection{}, false
}

// Forget drops the selection of req.
func (s *Selector) Forget(req Requirement) { delete(s.sel, req) }

// Update re-evaluates req against the candidates (the paths to req.Dst) at now. It returns
// the selection and, if the path changed, the change.
//
// Rules: the incumbent down → move at once to the best path that is up; the incumbent
// over MaxLatency while another path meets it → move at once; otherwise, within HoldDown
// of the last change nothing moves, and after it a challenger must have been up for
// HoldDown itself (so traffic fails back only to a path that stayed healthy) and beat the
// incumbent by the class's margin.
func (s *Selector) Update(now time.Time, req Requirement, cands []Candidate) (Selection, *Change) {
	cur := s.sel[req]
	if cur == nil {
		cur = &Selection{Requirement: req}
		s.sel[req] = cur
	}
	var up []Candidate
	for _, c := range cands {
		if c.Stats.State == StateUp {
			up = append(up, c)
		}
	}
	move := func(to Candidate, reason string) *Change {
		ch := &Change{Requirement: req, From: cur.PathID, To: to.ID, At: now, Reason: reason}
		cur.PathID, cur.Since, cur.Reason = to.ID, now, reason
		return ch
	}
	var ch *Change
	if len(up) == 0 {
		if cur.PathID != "" {
			ch = &Change{Requirement: req, From: cur.PathID, At: now, Reason: ReasonNoPath}
		}
		if cur.PathID != "" || cur.Since.IsZero() {
			cur.PathID, cur.Since, cur.Reason = "", now, ReasonNoPath
		}
		cur.Condition = CondNoPathUp
		return *cur, ch
	}
	best, _ := s.pick(req, up)
	inc, incUp := find(up, cur.PathID)
	switch {
	case cur.PathID == "":
		ch = move(best, ReasonInitial)
	case !incUp:
		ch = move(best, ReasonFailover)
	case req.Class == LatencySensitive && !meets(req, inc) && meets(req, best):
		ch = move(best, ReasonBound)
	case now.Sub(cur.Since) < s.cfg.HoldDown:
		// Hold-down: stay.
	default:
		settled := []Candidate{inc}
		for _, c := range up {
			if c.ID != inc.ID && now.Sub(c.Stats.Since) >= s.cfg.HoldDown {
				settled = append(settled, c)
			}
		}
		if chal, _ := s.pick(req, settled); chal.ID != inc.ID && s.beats(req, chal, inc) {
			ch = move(chal, ReasonBetter)
		}
	}
	cur.Condition = ""
	if sel, _ := find(up, cur.PathID); req.Class == LatencySensitive && !meets(req, sel) {
		cur.Condition = CondNoPathMeetsMaxLatency
	}
	return *cur, ch
}

func find(cs []Candidate, id string) (Candidate, bool) {
	for _, c := range cs {
		if c.ID == id {
			return c, true
		}
	}
	return Candidate{}, false
}

func meets(req Requirement, c Candidate) bool {
	return req.MaxLatency <= 0 || c.Stats.SRTT <= req.MaxLatency
}

// pick returns the best of cs (not empty) for the class, and whether it meets MaxLatency.
func (s *Selector) pick(req Requirement, cs []Candidate) (Candidate, bool) {
	byLatency := func(a, b Candidate) int {
		return cmp.Or(cmp.Compare(a.Stats.SRTT, b.Stats.SRTT), cmp.Compare(b.Score, a.Score), cmp.Compare(a.ID, b.ID))
	}
	switch req.Class {
	case LatencySensitive:
		var ok []Candidate
		for _, c := range cs {
			if meets(req, c) {
				ok = append(ok, c)
			}
		}
		if len(ok) > 0 {
			return slices.MinFunc(ok, byLatency), true
		}
		return slices.MinFunc(cs, byLatency), false
	case Bulk:
		return slices.MinFunc(cs, func(a, b Candidate) int {
			return cmp.Or(cmp.Compare(b.BandwidthMbps, a.BandwidthMbps), cmp.Compare(b.Score, a.Score), cmp.Compare(a.ID, b.ID))
		}), true
	default:
		return slices.MinFunc(cs, func(a, b Candidate) int {
			return cmp.Or(cmp.Compare(b.Score, a.Score), byLatency(a, b))
		}), true
	}
}

// beats reports whether challenger c is better than incumbent i by the class's margin.
func (s *Selector) beats(req Requirement, c, i Candidate) bool {
	switch req.Class {
	case LatencySensitive:
		gain := i.Stats.SRTT - c.Stats.SRTT
		return float64(c.Stats.SRTT) < float64(i.Stats.SRTT)*(1-s.cfg.LatencyMargin) && gain >= s.cfg.MinLatencyGain
	case Bulk:
		if c.BandwidthMbps > i.BandwidthMbps*(1+s.cfg.BandwidthMargin) {
			return true
		}
		return c.BandwidthMbps >= i.BandwidthMbps && c.Score >= i.Score+s.cfg.ScoreMargin
	default:
		return c.Score >= i.Score+s.cfg.ScoreMargin
	}
}

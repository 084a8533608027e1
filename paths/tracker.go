// Package paths is the pure core of path selection: per-path probe statistics (smoothed
// RTT and variation like TCP's SRTT/RTTVAR, jitter, loss over a sliding window, liveness
// from consecutive misses), the path score (0–100, from those and optional L7 metrics),
// and per-QoS-class selection with hysteresis and hold-down.
//
// Nothing here reads a clock, a socket or the kernel: callers pass the time in, so every
// decision is reproducible in a table-driven test. Package probe drives it with real
// probes.
package paths

import (
	"fmt"
	"time"
)

// Config holds the measurement and selection knobs. Zero fields take the defaults below.
type Config struct {
	// Interval between probes on a path (config key probe-interval). Default 50ms.
	Interval time.Duration
	// DownAfter consecutive lost probes mark a path down. Default 3. The failover floor is
	// Interval × DownAfter.
	DownAfter int
	// LossWindow is how many most recent completed probes the loss ratio covers. Default 100.
	LossWindow int
	// MinTimeout and MaxTimeout bound how long a probe may stay unanswered before it counts
	// as lost (SRTT + 4·RTTVAR in between, like TCP's RTO). Defaults 20ms and 1s; before any
	// answer the timeout is MaxTimeout.
	MinTimeout, MaxTimeout time.Duration
	// HoldDown: after a selection changes, no discretionary move for this long; a path that
	// came back up must have stayed up this long before traffic fails back to it. Default 5s.
	HoldDown time.Duration
	// ScoreMargin: a challenger must beat the incumbent's score by this many points
	// (best-effort). Default 10.
	ScoreMargin float64
	// LatencyMargin: a challenger must be this fraction faster than the incumbent
	// (latency-sensitive), and at least MinLatencyGain faster. Defaults 0.2 and 2ms.
	LatencyMargin  float64
	MinLatencyGain time.Duration
	// BandwidthMargin: a challenger must offer this fraction more bandwidth (bulk). Default 0.1.
	BandwidthMargin float64
	// L7TTL: L7 metrics older than this no longer enter the score. Default 30s.
	L7TTL time.Duration
	// Weights of the score; see Score.
	Weights Weights
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Interval, 50*time.Millisecond)
	def(&c.MinTimeout, 20*time.Millisecond)
	def(&c.MaxTimeout, time.Second)
	def(&c.HoldDown, 5*time.Second)
	def(&c.MinLatencyGain, 2*time.Millisecond)
	def(&c.L7TTL, 30*time.Second)
	if c.DownAfter <= 0 {
		c.DownAfter = 3
	}
	if c.LossWindow <= 0 {
		c.LossWindow = 100
	}
	if c.ScoreMargin <= 0 {
		c.ScoreMargin = 10
	}
	if c.LatencyMargin <= 0 {
		c.LatencyMargin = 0.2
	}
	if c.BandwidthMargin <= 0 {
		c.BandwidthMargin = 0.1
	}
	c.Weights = c.Weights.withDefaults()
	return c
}

// Validate reports an unusable configuration.
func (c Config) Validate() error {
	if c.MinTimeout > c.MaxTimeout {
		return fmt.Errorf("min timeout %v above max timeout %v", c.MinTimeout, c.MaxTimeout)
	}
	if c.LatencyMargin >= 1 {
		return fmt.Errorf("latency margin %v: must be below 1", c.LatencyMargin)
	}
	return nil
}

// State of a path's liveness.
type State string

const (
	// StateUnknown: no probe answered yet.
	StateUnknown State = "unknown"
	// StateUp: answering.
	StateUp State = "up"
	// StateDown: DownAfter consecutive probes lost.
	StateDown State = "down"
)

// Stats is what the probes measured on one path.
type Stats struct {
	State State `json:"state"`
	// Since is when State last changed.
	Since time.Time `json:"since"`
	// SRTT and RTTVar are the smoothed round trip and its mean deviation (RFC 6298).
	SRTT   time.Duration `json:"srtt"`
	RTTVar time.Duration `json:"rttvar"`
	// LastRTT is the latest sample.
	LastRTT time.Duration `json:"last_rtt"`
	// Jitter is the smoothed difference between consecutive RTT samples (RFC 3550's
	// estimator applied to round trips).
	Jitter time.Duration `json:"jitter"`
	// Loss is the lost share of the last LossWindow completed probes (0..1).
	Loss float64 `json:"loss"`
	// Sent, Received, Lost count probes over the path's lifetime; ConsecutiveLost is the
	// current run of losses.
	Sent            uint64 `json:"sent"`
	Received        uint64 `json:"received"`
	Lost            uint64 `json:"lost"`
	ConsecutiveLost int    `json:"consecutive_lost"`
}

// Tracker turns probe events of one path into Stats. Not safe for concurrent use.
type Tracker struct {
	cfg      Config
	st       Stats
	pending  map[uint64]time.Time // seq → sent at
	expired  map[uint64]time.Time // counted lost, still waiting for a late answer
	window   []bool               // ring of outcomes, true = lost
	wpos     int
	wfull    bool
	wlost    int
	haveRTT  bool
	prevRTT  time.Duration
	haveJitt bool
}

// NewTracker returns a tracker with no history (state unknown since now).
func NewTracker(cfg Config, now time.Time) *Tracker {
	cfg = cfg.WithDefaults()
	return &Tracker{cfg: cfg, st: Stats{State: StateUnknown, Since: now}, pending: map[uint64]time.Time{},
		expired: map[uint64]time.Time{}, window: make([]bool, cfg.LossWindow)}
}

// Stats returns the current statistics.
func (t *Tracker) Stats() Stats { return t.st }

// Timeout is how long a probe sent now may stay unanswered before it counts as lost.
func (t *Tracker) Timeout() time.Duration {
	if !t.haveRTT {
		return t.cfg.MaxTimeout
	}
	to := t.st.SRTT + 4*t.st.RTTVar
	return min(max(to, t.cfg.MinTimeout), t.cfg.MaxTimeout)
}

// Sent records that probe seq left at at.
func (t *Tracker) Sent(seq uint64, at time.Time) {
	t.pending[seq] = at
	t.st.Sent++
}

// Reply records the answer to probe seq, received at now. It returns false for an answer
// to a probe that is not pending. An answer to a probe already counted as lost stays a
// loss (it came too late) but still feeds the RTT estimate, so the timeout adapts when a
// path's delay grows (sequence numbers are unique, so unlike TCP's retransmissions there
// is no ambiguity to avoid).
func (t *Tracker) Reply(seq uint64, now time.Time) bool {
	sentAt, ok := t.pending[seq]
	if !ok {
		if at, late := t.expired[seq]; late {
			delete(t.expired, seq)
			t.sample(max(now.Sub(at), 0))
		}
		t.alive(now)
		return false
	}
	delete(t.pending, seq)
	t.st.Received++
	t.sample(max(now.Sub(sentAt), 0))
	t.record(false)
	t.alive(now)
	return true
}

func (t *Tracker) sample(rtt time.Duration) {
	t.st.LastRTT = rtt
	if !t.haveRTT {
		// RFC 6298 2.2: first measurement.
		t.st.SRTT, t.st.RTTVar, t.haveRTT = rtt, rtt/2, true
	} else {
		// RFC 6298 2.3 with alpha = 1/8, beta = 1/4.
		t.st.RTTVar = (3*t.st.RTTVar + absDur(t.st.SRTT-rtt)) / 4
		t.st.SRTT = (7*t.st.SRTT + rtt) / 8
		d := absDur(rtt - t.prevRTT)
		if !t.haveJitt {
			t.st.Jitter, t.haveJitt = d, true
		} else {
			t.st.Jitter += (d - t.st.Jitter) / 16
		}
	}
	t.prevRTT = rtt
}

func (t *Tracker) alive(now time.Time) {
	t.st.ConsecutiveLost = 0
	if t.st.State != StateUp {
		t.st.State, t.st.Since = StateUp, now
	}
}

// Expire counts every pending probe older than its timeout as lost and returns how many.
// A path goes down when DownAfter consecutive probes are lost.
func (t *Tracker) Expire(now time.Time) int {
	to := t.Timeout()
	n := 0
	// Count in send order so consecutive losses are consecutive probes.
	for {
		seq, at, ok := t.oldestPending()
		if !ok || now.Sub(at) < to {
			break
		}
		delete(t.pending, seq)
		t.expired[seq] = at
		n++
		t.st.Lost++
		t.st.ConsecutiveLost++
		t.record(true)
		if t.st.ConsecutiveLost >= t.cfg.DownAfter && t.st.State != StateDown {
			// Since is the time of detection, which is what a failover waits on.
			t.st.State, t.st.Since = StateDown, now
		}
	}
	for seq, at := range t.expired {
		if now.Sub(at) > t.cfg.MaxTimeout {
			delete(t.expired, seq)
		}
	}
	return n
}

func (t *Tracker) oldestPending() (uint64, time.Time, bool) {
	var (
		best   uint64
		bestAt time.Time
		found  bool
	)
	for seq, at := range t.pending {
		if !found || seq < best {
			best, bestAt, found = seq, at, true
		}
	}
	return best, bestAt, found
}

func (t *Tracker) record(lost bool) {
	if t.wfull && t.window[t.wpos] {
		t.wlost--
	}
	t.window[t.wpos] = lost
	if lost {
		t.wlost++
	}
	t.wpos++
	if t.wpos == len(t.window) {
		t.wpos, t.wfull = 0, true
	}
	n := t.wpos
	if t.wfull {
		n = len(t.window)
	}
	t.st.Loss = float64(t.wlost) / float64(n)
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

package paths

import (
	"testing"
	"time"
)

// cand builds a candidate that has been up since upFor before the evaluation time.
func cand(id string, srtt time.Duration, score, bw float64, state State, since time.Time) Candidate {
	return Candidate{ID: id, Stats: Stats{State: state, Since: since, SRTT: srtt}, Score: score, BandwidthMbps: bw}
}

func TestSelector(t *testing.T) {
	const hold = 5 * time.Second
	cfg := Config{HoldDown: hold}
	long := t0.Add(-time.Hour) // up for a long time
	type step struct {
		at     time.Duration // after t0
		cands  []Candidate
		want   string
		reason string // reason of the change at this step ("" = no change expected)
		cond   string
	}
	fast := func(id string, srtt time.Duration) Candidate { return cand(id, srtt, 90, 100, StateUp, long) }
	down := func(id string) Candidate { return cand(id, 0, 0, 100, StateDown, t0) }
	for _, tc := range []struct {
		name  string
		req   Requirement
		steps []step
	}{
		{"latency-sensitive picks the lowest latency", Requirement{Dst: "b", Class: LatencySensitive}, []step{
			{0, []Candidate{fast("p1", 30*ms1), fast("p2", 5*ms1)}, "p2", ReasonInitial, ""},
		}},
		{"hysteresis: a small gain does not move", Requirement{Dst: "b", Class: LatencySensitive}, []step{
			{0, []Candidate{fast("p1", 10*ms1), fast("p2", 30*ms1)}, "p1", ReasonInitial, ""},
			{10 * time.Second, []Candidate{fast("p1", 10*ms1), fast("p2", 9*ms1)}, "p1", "", ""},
			{20 * time.Second, []Candidate{fast("p1", 10*ms1), fast("p2", 5*ms1)}, "p2", ReasonBetter, ""},
		}},
		{"hold-down delays a discretionary move", Requirement{Dst: "b", Class: LatencySensitive}, []step{
			{0, []Candidate{fast("p1", 5*ms1), fast("p2", 30*ms1)}, "p1", ReasonInitial, ""},
			{time.Second, []Candidate{fast("p1", 30*ms1), fast("p2", 5*ms1)}, "p1", "", ""},
			{hold - time.Millisecond, []Candidate{fast("p1", 30*ms1), fast("p2", 5*ms1)}, "p1", "", ""},
			{hold, []Candidate{fast("p1", 30*ms1), fast("p2", 5*ms1)}, "p2", ReasonBetter, ""},
		}},
		{"failover is immediate, failback waits for a healthy hold-down", Requirement{Dst: "b", Class: LatencySensitive}, []step{
			{0, []Candidate{fast("p1", 5*ms1), fast("p2", 30*ms1)}, "p1", ReasonInitial, ""},
			{time.Second, []Candidate{down("p1"), fast("p2", 30*ms1)}, "p2", ReasonFailover, ""},
			// p1 is back at 8s; the selection's hold-down (since 1s) is over at 6s, but p1
			// itself has been up only since 8s.
			{9 * time.Second, []Candidate{cand("p1", 5*ms1, 90, 100, StateUp, t0.Add(8*time.Second)), fast("p2", 30*ms1)}, "p2", "", ""},
			{13 * time.Second, []Candidate{cand("p1", 5*ms1, 90, 100, StateUp, t0.Add(8*time.Second)), fast("p2", 30*ms1)}, "p1", ReasonBetter, ""},
		}},
		{"max-latency: bound violation moves at once", Requirement{Dst: "b", Class: LatencySensitive, MaxLatency: 20 * ms1}, []step{
			{0, []Candidate{fast("p1", 5*ms1), fast("p2", 15*ms1)}, "p1", ReasonInitial, ""},
			{time.Second, []Candidate{fast("p1", 40*ms1), fast("p2", 15*ms1)}, "p2", ReasonBound, ""},
		}},
		{"max-latency no path meets: fastest and a condition", Requirement{Dst: "b", Class: LatencySensitive, MaxLatency: 3 * ms1}, []step{
			{0, []Candidate{fast("p1", 5*ms1), fast("p2", 15*ms1)}, "p1", ReasonInitial, CondNoPathMeetsMaxLatency},
			{time.Second, []Candidate{fast("p1", 2*ms1), fast("p2", 15*ms1)}, "p1", "", ""},
		}},
		{"bulk picks the highest bandwidth", Requirement{Dst: "b", Class: Bulk}, []step{
			{0, []Candidate{cand("p1", 5*ms1, 95, 100, StateUp, long), cand("p2", 30*ms1, 80, 1000, StateUp, long)}, "p2", ReasonInitial, ""},
			{10 * time.Second, []Candidate{cand("p1", 5*ms1, 85, 1050, StateUp, long), cand("p2", 30*ms1, 80, 1000, StateUp, long)}, "p2", "", ""},
			{20 * time.Second, []Candidate{cand("p1", 5*ms1, 95, 2000, StateUp, long), cand("p2", 30*ms1, 80, 1000, StateUp, long)}, "p1", ReasonBetter, ""},
		}},
		{"best-effort follows the score with a margin", Requirement{Dst: "b", Class: BestEffort}, []step{
			{0, []Candidate{cand("p1", 5*ms1, 90, 0, StateUp, long), cand("p2", 5*ms1, 80, 0, StateUp, long)}, "p1", ReasonInitial, ""},
			{10 * time.Second, []Candidate{cand("p1", 5*ms1, 85, 0, StateUp, long), cand("p2", 5*ms1, 92, 0, StateUp, long)}, "p1", "", ""},
			{20 * time.Second, []Candidate{cand("p1", 5*ms1, 75, 0, StateUp, long), cand("p2", 5*ms1, 92, 0, StateUp, long)}, "p2", ReasonBetter, ""},
		}},
		{"no path up, then one", Requirement{Dst: "b", Class: BestEffort}, []step{
			{0, []Candidate{down("p1")}, "", "", CondNoPathUp},
			{time.Second, []Candidate{cand("p1", 5*ms1, 90, 0, StateUp, t0.Add(time.Second))}, "p1", ReasonInitial, ""},
			{2 * time.Second, []Candidate{down("p1")}, "", ReasonNoPath, CondNoPathUp},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSelector(cfg)
			for i, st := range tc.steps {
				sel, ch := s.Update(t0.Add(st.at), tc.req, st.cands)
				if sel.PathID != st.want || sel.Condition != st.cond {
					t.Fatalf("step %d: selected %q (condition %q), want %q (%q)", i, sel.PathID, sel.Condition, st.want, st.cond)
				}
				switch {
				case st.reason == "" && ch != nil:
					t.Fatalf("step %d: unexpected change %+v", i, *ch)
				case st.reason != "" && (ch == nil || ch.Reason != st.reason || ch.To != st.want):
					t.Fatalf("step %d: change %+v, want reason %s to %q", i, ch, st.reason, st.want)
				}
			}
		})
	}
}

// sim runs a Monitor with two simulated paths whose RTT (or loss) comes from rtt(path, t).
type sim struct {
	m       *Monitor
	now     time.Time
	seq     uint64
	pending []struct {
		id  string
		seq uint64
		at  time.Time
	}
	changes []Change
}

func (s *sim) run(d time.Duration, rtt func(id string, now time.Time) (time.Duration, bool)) {
	cfg := s.m.Config()
	end := s.now.Add(d)
	for ; s.now.Before(end); s.now = s.now.Add(ms1) {
		if s.now.Sub(t0)%cfg.Interval == 0 {
			for _, id := range []string{"p1", "p2"} {
				s.seq++
				s.m.Sent(id, s.seq, s.now)
				if r, ok := rtt(id, s.now); ok {
					s.pending = append(s.pending, struct {
						id  string
						seq uint64
						at  time.Time
					}{id, s.seq, s.now.Add(r)})
				}
			}
		}
		rest := s.pending[:0]
		for _, p := range s.pending {
			if !p.at.After(s.now) {
				s.m.Reply(p.id, p.seq, s.now)
			} else {
				rest = append(rest, p)
			}
		}
		s.pending = rest
		s.changes = append(s.changes, s.m.Tick(s.now)...)
	}
}

func TestMonitorScenario(t *testing.T) {
	m := NewMonitor(Config{HoldDown: 2 * time.Second})
	if err := m.SetPaths([]PathSpec{{ID: "p1", Src: "a1", Dst: "b", BandwidthMbps: 100}, {ID: "p2", Src: "a2", Dst: "b", BandwidthMbps: 1000}}, t0); err != nil {
		t.Fatal(err)
	}
	s := &sim{m: m, now: t0}
	delay := map[string]time.Duration{"p1": 10 * ms1, "p2": 60 * ms1}
	black := map[string]bool{}
	rtt := func(id string, _ time.Time) (time.Duration, bool) { return delay[id], !black[id] }
	sel := func(c Class) string {
		x, _ := m.Selection(Requirement{Dst: "b", Class: c})
		return x.PathID
	}

	s.run(3*time.Second, rtt)
	if sel(LatencySensitive) != "p1" || sel(Bulk) != "p2" || sel(BestEffort) != "p1" {
		t.Fatalf("initial: ls=%s bulk=%s be=%s", sel(LatencySensitive), sel(Bulk), sel(BestEffort))
	}
	// Swap the delays: latency-sensitive follows after the smoothing and hold-down.
	delay["p1"], delay["p2"] = 60*ms1, 10*ms1
	s.run(5*time.Second, rtt)
	if sel(LatencySensitive) != "p2" || sel(Bulk) != "p2" {
		t.Fatalf("after swap: ls=%s bulk=%s", sel(LatencySensitive), sel(Bulk))
	}
	// Blackhole the active path: moved within interval × misses + timeout.
	black["p2"] = true
	cut := s.now
	s.changes = nil
	s.run(time.Second, rtt)
	if sel(LatencySensitive) != "p1" || sel(Bulk) != "p1" {
		t.Fatalf("after blackhole: ls=%s bulk=%s", sel(LatencySensitive), sel(Bulk))
	}
	var gap time.Duration
	for _, c := range s.changes {
		if c.Class == LatencySensitive {
			gap = c.At.Sub(cut)
			if c.Reason != ReasonFailover {
				t.Errorf("reason %s", c.Reason)
			}
		}
	}
	cfg := m.Config()
	floor := cfg.Interval * time.Duration(cfg.DownAfter)
	if gap < floor-cfg.Interval || gap > floor+cfg.MinTimeout+cfg.Interval {
		t.Errorf("failover after %v, floor %v", gap, floor)
	}
	t.Logf("simulated detection gap %v (floor %v)", gap, floor)
	// Recovery: bulk fails back to p2 only after it stayed up for the hold-down.
	black["p2"] = false
	s.run(time.Second, rtt)
	if sel(Bulk) != "p1" {
		t.Fatalf("failed back after 1s, before the hold-down")
	}
	s.run(2*time.Second, rtt)
	if sel(Bulk) != "p2" {
		t.Fatalf("no failback after the hold-down: bulk=%s", sel(Bulk))
	}
	snap := m.Snapshot(s.now)
	if len(snap.Paths) != 2 || len(snap.Selections) != 3 {
		t.Fatalf("snapshot %+v", snap)
	}
	for _, p := range snap.Paths {
		if p.State != StateUp || p.Score <= 0 || p.LatencyMs <= 0 {
			t.Errorf("path %+v", p)
		}
	}
	// L7 metrics for an unknown path are refused; for a known one they lower its score.
	if err := m.FeedL7(L7{PathID: "nope"}, s.now); err == nil {
		t.Error("L7 for an unknown path accepted")
	}
	before := snap.Paths[0].Score
	if err := m.FeedL7(L7{PathID: "p1", ErrorRate: 0.05}, s.now); err != nil {
		t.Fatal(err)
	}
	if after := m.Snapshot(s.now).Paths[0].Score; after != before-30 && after != 0 {
		t.Errorf("score with 5%% errors %v, before %v", after, before)
	}
	if after := m.Snapshot(s.now.Add(time.Minute)).Paths[0].Score; after != before {
		t.Errorf("stale L7 still counts: %v vs %v", after, before)
	}
}

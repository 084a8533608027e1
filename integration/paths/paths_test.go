package pathstest

import (
	"testing"
	"time"

	"github.com/patronus/patronus/paths"
)

const ms = time.Millisecond

func TestSelectionFollowsDelaysAndBlackholes(t *testing.T) {
	cfg := paths.Config{Interval: 50 * ms, DownAfter: 3, HoldDown: time.Second}
	// A latency-sensitive pod with max-latency-ms 2: no path meets it.
	strict := paths.Requirement{Dst: "cluster-b", Class: paths.LatencySensitive, MaxLatency: 2 * ms}
	l := newLab(t, cfg, [2]time.Duration{5 * ms, 30 * ms}, []paths.Requirement{strict})

	// The first path to answer is selected at once; the class's proper path takes over
	// once it has been up for the hold-down.
	l.waitFor(t, 10*time.Second, "initial selections", func() bool {
		return l.selected(paths.LatencySensitive) == "p1" && l.selected(paths.Bulk) == "p2" && l.selected(paths.BestEffort) == "p1"
	})
	time.Sleep(500 * ms) // let the estimates settle before reading them
	for _, p := range l.prober.Monitor().Snapshot(time.Now()).Paths {
		t.Logf("%s: rtt %.2fms jitter %.2fms loss %.3f score %.1f classes %v", p.ID, p.LatencyMs, p.JitterMs, p.Loss, p.Score, p.Classes)
	}
	if s, _ := l.prober.Monitor().Selection(strict); s.PathID != "p1" || s.Condition != paths.CondNoPathMeetsMaxLatency {
		t.Errorf("max-latency 2ms: %+v, want p1 with %s", s, paths.CondNoPathMeetsMaxLatency)
	}

	// Swap the delays: latency-sensitive moves to p2, not before the hold-down of its
	// last move; bulk stays on the configured high-bandwidth p2.
	l.drain()
	l.setRTT(t, 0, 30*ms)
	l.setRTT(t, 1, 5*ms)
	swapped := time.Now()
	m := l.waitMove(t, paths.LatencySensitive, "p2", 10*time.Second)
	t.Logf("latency-sensitive moved p1 → p2 %v after the swap (%s)", m.seen.Sub(swapped).Round(ms), m.Reason)
	if m.Reason != paths.ReasonBetter {
		t.Errorf("reason %s, want %s", m.Reason, paths.ReasonBetter)
	}
	if l.selected(paths.Bulk) != "p2" {
		t.Errorf("bulk on %s after the swap", l.selected(paths.Bulk))
	}

	// Blackhole the active path: latency-sensitive and bulk fail over at once.
	l.drain()
	l.blackhole(t, 1, true)
	cut := time.Now()
	m = l.waitMove(t, paths.LatencySensitive, "p1", 3*time.Second)
	gap := m.seen.Sub(cut)
	floor := cfg.Interval * time.Duration(cfg.DownAfter)
	t.Logf("blackhole of p2: latency-sensitive on p1 after %v (floor interval×misses %v×%d = %v)", gap.Round(time.Millisecond), cfg.Interval, cfg.DownAfter, floor)
	if m.Reason != paths.ReasonFailover {
		t.Errorf("reason %s, want %s", m.Reason, paths.ReasonFailover)
	}
	if gap > floor+350*ms {
		t.Errorf("failover took %v, more than interval×misses + 350ms", gap)
	}
	l.waitFor(t, time.Second, "bulk failover", func() bool { return l.selected(paths.Bulk) == "p1" })

	// Recovery: traffic fails back only after p2 stayed healthy for the hold-down.
	l.blackhole(t, 1, false)
	lifted := time.Now()
	m = l.waitMove(t, paths.LatencySensitive, "p2", 10*time.Second)
	back := m.seen.Sub(lifted)
	t.Logf("blackhole lifted: latency-sensitive back on p2 after %v (hold-down %v)", back.Round(ms), cfg.HoldDown)
	if back < cfg.HoldDown {
		t.Errorf("failed back after %v, before the hold-down %v", back, cfg.HoldDown)
	}
}

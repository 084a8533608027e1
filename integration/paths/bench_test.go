package pathstest

import (
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/patronus/patronus/dataplane/steer"
	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/wanem"
)

// BenchmarkFailover blackholes the latency-sensitive path b.N times and measures how long
// the selection takes to move (scripts/bench/failover.sh runs it with -benchtime 20x and
// more). PATRONUS_PROBE_INTERVAL (default 50ms) and PATRONUS_PROBE_MISSES (default 3) set
// the probe interval and the miss threshold.
func BenchmarkFailover(b *testing.B) {
	interval, misses := benchKnobs(b)
	cfg := paths.Config{Interval: interval, DownAfter: misses, HoldDown: 300 * ms}
	l := newLab(b, cfg, [2]time.Duration{5 * ms, 30 * ms}, nil)
	l.waitFor(b, 10*time.Second, "latency-sensitive on p1", func() bool { return l.selected(paths.LatencySensitive) == "p1" })
	time.Sleep(time.Second) // estimates settle
	gaps := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l.drain()
		l.blackhole(b, 0, true)
		cut := time.Now()
		m := l.waitMove(b, paths.LatencySensitive, "p2", 5*time.Second)
		gaps = append(gaps, m.seen.Sub(cut))
		b.Logf("round %d: failover after %v", i+1, m.seen.Sub(cut).Round(100*time.Microsecond))
		l.blackhole(b, 0, false)
		l.waitMove(b, paths.LatencySensitive, "p1", 10*time.Second)
		// Random phase against the probe schedule, as a real failure has.
		time.Sleep(time.Duration(i%7) * interval / 7)
	}
	b.StopTimer()
	report(b, gaps, interval, misses)
}

// BenchmarkTrafficFailover measures what a pod sees: a UDP flow (1 datagram/ms) from a
// steered latency-sensitive pod runs through every round; each round blackholes the path
// the flow is on and measures the longest silence at the receiver (detection + steering
// rewrite + the tunnel). The flow is pinned to its path by conntrack, so rounds alternate
// between the paths. Same knobs as BenchmarkFailover.
func BenchmarkTrafficFailover(b *testing.B) {
	interval, misses := benchKnobs(b)
	cfg := paths.Config{Interval: interval, DownAfter: misses, HoldDown: 300 * ms}
	l := newSteerLab(b, cfg, [2]time.Duration{5 * ms, 30 * ms}, [2]float64{100, 1000},
		[2]steer.PodClass{{Name: "a/ls", Class: paths.LatencySensitive}, {Name: "a/bulk", Class: paths.Bulk}}, nil)
	l.waitFor(b, 15*time.Second, "latency-sensitive on p1", func() bool { return l.selected(paths.LatencySensitive) == "p1" })
	time.Sleep(time.Second)
	s := l.serveUDP(b, 9400)
	f := l.startFlow(b, 0, 9400, ms)
	defer f.end()
	up := func(i int) bool {
		for _, p := range l.prober.Monitor().Snapshot(time.Now()).Paths {
			if p.ID == pathIDs[i] {
				return p.State == paths.StateUp
			}
		}
		return false
	}
	gaps := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		time.Sleep(300*ms + time.Duration(i%7)*interval/7) // random phase against the probes
		before := l.forwarded()
		time.Sleep(100 * ms)
		after := l.forwarded()
		on := 0
		if after[1]-before[1] > after[0]-before[0] {
			on = 1
		}
		l.setPath(b, on, func(im *wanem.Impairment) { im.Blackhole = true })
		cut := time.Now()
		time.Sleep(time.Duration(misses)*interval + time.Second)
		// On a loaded machine the other path may itself flap (probe timeouts of 20 ms):
		// the outage then lasts until it is back, and is measured as such.
		resumed := func() bool { return len(s.arrivalsAfter(time.Now().Add(-200*ms))) >= 50 }
		for deadline := time.Now().Add(5 * time.Second); !resumed() && time.Now().Before(deadline); {
			time.Sleep(20 * ms)
		}
		if !resumed() {
			b.Fatalf("round %d: the flow did not continue after blackholing %s; state: %s", i+1, pathIDs[on], dumpMonitor(l.prober.Monitor()))
		}
		gap := s.outage(cut, time.Now())
		gaps = append(gaps, gap)
		b.Logf("round %d: blackholed %s, outage %v", i+1, pathIDs[on], gap.Round(100*time.Microsecond))
		l.setPath(b, on, func(im *wanem.Impairment) { im.Blackhole = false })
		l.waitFor(b, 15*time.Second, pathIDs[on]+" up again", func() bool { return up(on) })
	}
	b.StopTimer()
	report(b, gaps, interval, misses)
}

// benchKnobs reads PATRONUS_PROBE_INTERVAL (default 50ms) and PATRONUS_PROBE_MISSES (3).
func benchKnobs(b *testing.B) (time.Duration, int) {
	interval, misses := 50*ms, 3
	if v := os.Getenv("PATRONUS_PROBE_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("PATRONUS_PROBE_INTERVAL: %v", err)
		}
		interval = d
	}
	if v := os.Getenv("PATRONUS_PROBE_MISSES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatalf("PATRONUS_PROBE_MISSES: %v", err)
		}
		misses = n
	}
	return interval, misses
}

func report(b *testing.B, gaps []time.Duration, interval time.Duration, misses int) {
	slices.Sort(gaps)
	q := func(p float64) time.Duration { return gaps[min(len(gaps)-1, int(p*float64(len(gaps))))] }
	floor := interval * time.Duration(misses)
	b.ReportMetric(float64(q(0.5))/1e6, "p50-ms")
	b.ReportMetric(float64(q(0.99))/1e6, "p99-ms")
	b.ReportMetric(float64(gaps[len(gaps)-1])/1e6, "max-ms")
	b.ReportMetric(float64(floor)/1e6, "floor-ms")
	b.Logf("interval %v, misses %d: %d blackholes, p50 %v p99 %v min %v max %v; floor interval×misses %v",
		interval, misses, len(gaps), q(0.5).Round(time.Millisecond), q(0.99).Round(time.Millisecond),
		gaps[0].Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond), floor)
}

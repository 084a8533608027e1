package pathstest

import (
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/patronus/patronus/paths"
)

// BenchmarkFailover blackholes the latency-sensitive path b.N times and measures how long
// the selection takes to move (scripts/bench/failover.sh runs it with -benchtime 20x and
// more). PATRONUS_PROBE_INTERVAL (default 50ms) and PATRONUS_PROBE_MISSES (default 3) set
// the probe interval and the miss threshold.
func BenchmarkFailover(b *testing.B) {
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
	slices.Sort(gaps)
	q := func(p float64) time.Duration { return gaps[min(len(gaps)-1, int(p*float64(len(gaps))))] }
	floor := interval * time.Duration(misses)
	b.ReportMetric(float64(q(0.5))/1e6, "p50-ms")
	b.ReportMetric(float64(q(0.99))/1e6, "p99-ms")
	b.ReportMetric(float64(gaps[len(gaps)-1])/1e6, "max-ms")
	b.ReportMetric(float64(floor)/1e6, "floor-ms")
	b.Logf("interval %v, misses %d: %d blackholes, failover p50 %v p99 %v min %v max %v; floor interval×misses %v",
		interval, misses, len(gaps), q(0.5).Round(time.Millisecond), q(0.99).Round(time.Millisecond),
		gaps[0].Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond), floor)
}

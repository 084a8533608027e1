package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/mesh/trust"
)

// BenchmarkRelayClaims measures a gateway announcing N pod-block claims on behalf of the
// cluster's other nodes (nodenet's relay) to a few receiving gateways: 1 announcer and 3
// receivers in-process over real UDP/TCP on loopback, LAN gossip timing, Refresh R
// (PATRONUS_BENCH_RELAY_REFRESH, default 10 s; TTL 3R). The announcer announces the N
// claims at once (what the relay loop does when it starts) and the mesh node re-signs
// them every R: in a burst ("burst", AnnounceRate -1, the behaviour before pacing), or
// paced at the default AnnounceRate ("paced"). Sampled every second from R to 3.5R after the burst: the fraction of the
// claims held by every receiver after one and two refreshes (at 1.5R and 2.5R); the
// seconds until every receiver holds every claim (-1: not within 3.5R, or 1.5 paced
// rounds); the minimum of that fraction over the 2R after (or after the deadline: a claim
// lost or expired before its refresh arrives shows there); replay and other rejections,
// serf's "received old event" drops (an event older than its EventBuffer window) and
// queue prunes over the run, summed over receivers; gossip bytes/s sent by the 4 nodes
// and the process CPU (cores, all 4 nodes and the sampling) over the run.
// PATRONUS_BENCH_RELAY_N is the comma-separated list of N (default 100,500,1000,2000);
// PATRONUS_BENCH_RELAY_GATEWAYS announcers (default 1) each announce the same N claims
// (every gateway of a cluster relays them all), to 3 receivers.
func BenchmarkRelayClaims(b *testing.B) {
	refresh := 10 * time.Second
	if d, err := time.ParseDuration(os.Getenv("PATRONUS_BENCH_RELAY_REFRESH")); err == nil && d > 0 {
		refresh = d
	}
	ns := []int{100, 500, 1000, 2000}
	if s := os.Getenv("PATRONUS_BENCH_RELAY_N"); s != "" {
		ns = nil
		for f := range strings.SplitSeq(s, ",") {
			if n, err := strconv.Atoi(f); err == nil && n > 0 {
				ns = append(ns, n)
			}
		}
	}
	for _, mode := range relayBenchModes {
		for _, n := range ns {
			b.Run(fmt.Sprintf("%s/N=%d", mode.name, n), func(b *testing.B) {
				for range b.N {
					runRelayClaims(b, mode, n, refresh)
				}
			})
		}
	}
}

// countingHandler counts serf's and memberlist's warnings about lost events.
type countingHandler struct{ oldEvents, pruned *atomic.Int64 }

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	switch {
	case strings.Contains(r.Message, "received old event"):
		h.oldEvents.Add(1)
	case strings.Contains(r.Message, "dropping messages"):
		h.pruned.Add(1)
	}
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// relayBenchName is a node name of realistic length (cloud providers' are 30-50 bytes).
func relayBenchName(i int) string {
	return fmt.Sprintf("ip-10-20-%d-%d.eu-west-1.compute.internal", i/250, i%250)
}

func runRelayClaims(b *testing.B, mode relayBenchMode, n int, refresh time.Duration) {
	base := loopbackBase()
	seed := base + "1:7946"
	c := newTestCluster(b, "east", "10.0.0.0/8")
	var oldEvents, pruned atomic.Int64
	type member struct {
		*Node
		reg    *prometheus.Registry
		cancel context.CancelFunc
		done   chan struct{}
	}
	var nodes []*member
	defer func() {
		for _, m := range nodes {
			m.cancel()
			<-m.done
		}
	}()
	gateways := 1
	if g, err := strconv.Atoi(os.Getenv("PATRONUS_BENCH_RELAY_GATEWAYS")); err == nil && g > 0 {
		gateways = g
	}
	for i := range gateways + 3 {
		name := fmt.Sprintf("gw%d", i)
		id, err := trust.NewIdentity(c.id, c.key, name, time.Now(), time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		o := Options{NodeName: name, ClusterID: c.id, Identity: id, Verifier: c.v, BindAddr: base + strconv.Itoa(i+1),
			Seeds: []string{seed}, DisableBeacons: true, Refresh: refresh, Registerer: reg,
			Logger: slog.New(countingHandler{&oldEvents, &pruned}), Tags: Tags{Role: "gateway", Version: "bench"}}
		mode.opts(&o)
		nd, err := New(o)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		m := &member{Node: nd, reg: reg, cancel: cancel, done: make(chan struct{})}
		go func() { _ = nd.Run(ctx); close(m.done) }()
		nodes = append(nodes, m)
	}
	for t0 := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		ok := true
		for _, m := range nodes {
			if _, alive := CountMembers(m.Members()); alive != len(nodes) {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Since(t0) > 2*time.Minute {
			b.Fatal("no full membership after 2m")
		}
	}
	gw, receivers := nodes[0], nodes[gateways:]
	claimed := time.Now().Add(-time.Hour).UnixMilli()
	var slots []string
	for i := range n {
		for _, g := range nodes[:gateways] {
			a := announce.Announcement{Kind: announce.KindPodBlock, Node: relayBenchName(i), Claimed: claimed,
				Prefixes: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24)}}
			if err := g.Announce(a); err != nil {
				b.Fatal(err)
			}
			a.Origin, a.Cluster = g.o.NodeName, g.o.ClusterID
			slots = append(slots, a.Slot())
		}
	}
	t0 := time.Now()
	complete := func() float64 {
		k := 0
		for _, s := range slots {
			all := true
			for _, m := range receivers {
				if _, ok := m.State().Get(s); !ok {
					all = false
					break
				}
			}
			if all {
				k++
			}
		}
		return float64(k) / float64(len(slots))
	}
	sent := func() (s uint64) {
		for _, m := range nodes {
			s += m.GossipBytesSent()
		}
		return s
	}
	// Until every receiver holds every claim (or a deadline: 3.5 refreshes, or 1.5 paced
	// rounds), then one more 2R window in which a claim lost or expired shows as a dip.
	deadline := refresh * 7 / 2
	if gw.pace != nil {
		deadline = max(deadline, time.Duration(1.5*float64(n)/gw.o.AnnounceRate*float64(time.Second))+refresh)
	}
	s0, c0 := sent(), cpuTime()
	at1, at2, toAll := -1.0, -1.0, -1.0
	for {
		time.Sleep(500 * time.Millisecond)
		f, el := complete(), time.Since(t0)
		if at1 < 0 && el >= refresh*3/2 {
			at1 = f
		}
		if at2 < 0 && el >= refresh*5/2 {
			at2 = f
		}
		if f == 1 && toAll < 0 {
			toAll = el.Seconds()
		}
		if (toAll >= 0 && at2 >= 0) || el > deadline {
			break
		}
	}
	afterMin := 1.0
	for t1 := time.Now(); time.Since(t1) < 2*refresh; {
		time.Sleep(500 * time.Millisecond)
		afterMin = min(afterMin, complete())
	}
	window := time.Since(t0)
	bytesPerSec := float64(sent()-s0) / window.Seconds()
	cores := float64(cpuTime()-c0) / float64(window)
	var replay, other, accepted float64
	for _, m := range receivers {
		for _, r := range announce.Reasons {
			if r == announce.ReasonReplay {
				replay += m.Receiver().Rejected(r)
			} else {
				other += m.Receiver().Rejected(r)
			}
		}
		accepted += counterValue(b, m.reg, "patronus_mesh_announcements_accepted_total")
	}
	b.ReportMetric(at1*100, "%complete-1refresh")
	b.ReportMetric(at2*100, "%complete-2refresh")
	b.ReportMetric(toAll, "s-to-all")
	b.ReportMetric(afterMin*100, "%complete-min-after")
	b.ReportMetric(accepted, "accepted")
	b.ReportMetric(replay, "replay-rejects")
	b.ReportMetric(other, "other-rejects")
	b.ReportMetric(float64(oldEvents.Load()), "serf-old-event-drops")
	b.ReportMetric(float64(pruned.Load()), "queue-prunes")
	b.ReportMetric(bytesPerSec, "gossip-B/s")
	b.ReportMetric(cores, "cpu-cores")
}

// counterValue is the value of the registered counter name.
func counterValue(b *testing.B, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	b.Fatalf("metric %s not registered", name)
	return 0
}

type relayBenchMode struct {
	name string
	opts func(*Options)
}

// relayBenchModes are the variants compared in one run.
var relayBenchModes = []relayBenchMode{
	{name: "burst", opts: func(o *Options) { o.AnnounceRate = -1 }},
	{name: "paced", opts: func(*Options) {}},
}

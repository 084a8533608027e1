package mesh

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"

	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/mesh/trust"
)

// benchAgents is the mesh size of the convergence benchmark (PATRONUS_BENCH_AGENTS).
func benchAgents() int {
	if n, err := strconv.Atoi(os.Getenv("PATRONUS_BENCH_AGENTS")); err == nil && n > 1 {
		return n
	}
	return 50
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkMeshConvergence starts N in-process agents over real UDP/TCP on distinct
// loopback addresses (LAN gossip timing, one seed), and reports: time from the first
// start to every agent seeing every other alive; the delay from a new announcement to
// each agent having verified it (p50, p99 over all agents and 20 announcements); gossip
// bytes per second per agent in a 10 s steady window (announcements are re-broadcast
// every 10 s here, so the window includes one anti-entropy round). The bare-serf sub-benchmark is the
// baseline from the same run: plain serf, no certificate checks, user events instead of
// signed announcements.
func BenchmarkMeshConvergence(b *testing.B) {
	for _, kind := range []string{"patronus", "bare-serf"} {
		b.Run(kind, func(b *testing.B) {
			for range b.N {
				runConvergence(b, kind, benchAgents())
			}
		})
	}
}

type benchNode interface {
	alive() int
	announce(i int) (key string, err error)
	has(key string) bool
	sent() uint64
	stop()
}

func runConvergence(b *testing.B, kind string, n int) {
	base := loopbackBase()
	seed := base + "1:7946"
	c := newTestCluster(b, "east", "10.0.0.0/8")
	nodes := make([]benchNode, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		addr := base + strconv.Itoa(i+1)
		var err error
		if kind == "patronus" {
			nodes[i], err = newPatronusBenchNode(c, fmt.Sprintf("n%02d", i), addr, seed)
		} else {
			nodes[i], err = newSerfBenchNode(fmt.Sprintf("n%02d", i), addr, seed)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	defer func() {
		for _, nd := range nodes {
			wg.Add(1)
			go func() { defer wg.Done(); nd.stop() }()
		}
		wg.Wait()
	}()
	for {
		done := true
		for _, nd := range nodes {
			if nd.alive() != n {
				done = false
				break
			}
		}
		if done {
			break
		}
		if time.Since(start) > 3*time.Minute {
			b.Fatalf("no full membership after 3m")
		}
		time.Sleep(20 * time.Millisecond)
	}
	full := time.Since(start)

	var perNode, toAll []time.Duration
	missed := 0
	for k := range 20 {
		origin := nodes[(k*7)%n]
		t0 := time.Now()
		key, err := origin.announce(1000 + k)
		if err != nil {
			b.Fatal(err)
		}
		seen := make([]bool, n)
		left := n
		for left > 0 {
			for j, nd := range nodes {
				if !seen[j] && nd.has(key) {
					seen[j] = true
					left--
					perNode = append(perNode, time.Since(t0))
				}
			}
			if time.Since(t0) > 40*time.Second {
				// Gossip is best effort: a lost event reaches the rest only through
				// anti-entropy (patronus re-broadcasts every Refresh; bare serf never).
				b.Logf("%s: announcement %d reached only %d of %d agents in 40s", kind, k, n-left, n)
				missed += left
				break
			}
			time.Sleep(time.Millisecond)
		}
		if left == 0 {
			toAll = append(toAll, time.Since(t0))
		}
	}

	var s0 uint64
	for _, nd := range nodes {
		s0 += nd.sent()
	}
	window := 10 * time.Second
	time.Sleep(window)
	var s1 uint64
	for _, nd := range nodes {
		s1 += nd.sent()
	}
	b.ReportMetric(float64(full.Milliseconds()), "ms-full-membership")
	b.ReportMetric(float64(percentile(perNode, 0.5).Microseconds())/1000, "ms-announce-p50")
	b.ReportMetric(float64(percentile(perNode, 0.99).Microseconds())/1000, "ms-announce-p99")
	b.ReportMetric(float64(percentile(toAll, 0.5).Microseconds())/1000, "ms-announce-all-p50")
	b.ReportMetric(float64(percentile(toAll, 0.99).Microseconds())/1000, "ms-announce-all-p99")
	b.ReportMetric(float64(s1-s0)/window.Seconds()/float64(n), "gossip-B/s/agent")
	b.ReportMetric(float64(n), "agents")
	b.ReportMetric(float64(missed), "missed-deliveries")
}

type patronusBenchNode struct {
	*Node
	cancel context.CancelFunc
	done   chan struct{}
}

func newPatronusBenchNode(c *testCluster, name, addr, seed string) (*patronusBenchNode, error) {
	id, err := trust.NewIdentity(c.id, c.key, name, time.Now(), time.Hour)
	if err != nil {
		return nil, err
	}
	nd, err := New(Options{NodeName: name, ClusterID: c.id, Identity: id, Verifier: c.v, BindAddr: addr,
		Seeds: []string{seed}, DisableBeacons: true, Refresh: 10 * time.Second, Tags: Tags{Role: "gateway", Version: "bench",
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, WireGuardKey: "hKw5XbU5eM8SxLmDeAQXrxWmL2dzJ8hJLh0g7mTg8mY="}})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &patronusBenchNode{Node: nd, cancel: cancel, done: make(chan struct{})}
	go func() { nd.Run(ctx); close(p.done) }()
	return p, nil
}

// alive counts like the baseline does (Members() would add formatting and sorting to the
// measurement loop).
func (p *patronusBenchNode) alive() int {
	c := 0
	for _, m := range p.Serf().Members() {
		if m.Status == serf.StatusAlive {
			c++
		}
	}
	return c
}
func (p *patronusBenchNode) announce(i int) (string, error) {
	a := announce.Announcement{Kind: announce.KindService, Service: &announce.Service{Namespace: "bench", Name: strconv.Itoa(i),
		Ports: []announce.Port{{Port: 80, Protocol: "TCP"}}, Endpoints: []netip.Addr{netip.MustParseAddr("10.244.1.5")}}}
	a.Origin, a.Cluster = p.o.NodeName, p.o.ClusterID
	return a.Slot(), p.Announce(a)
}

func (p *patronusBenchNode) has(key string) bool {
	_, ok := p.State().Get(key)
	return ok
}
func (p *patronusBenchNode) sent() uint64 { return p.GossipBytesSent() }
func (p *patronusBenchNode) stop()        { p.cancel(); <-p.done }

// serfBenchNode is plain serf: the baseline.
type serfBenchNode struct {
	s         *serf.Serf
	sentBytes atomic.Uint64
	mu        sync.Mutex
	got       map[string]bool
	done      chan struct{}
}

func newSerfBenchNode(name, addr, seed string) (*serfBenchNode, error) {
	sn := &serfBenchNode{got: map[string]bool{}, done: make(chan struct{})}
	conf := serf.DefaultConfig()
	conf.Init()
	conf.NodeName = name
	conf.Logger = log.New(io.Discard, "", 0)
	conf.Tags = map[string]string{"role": "gateway"}
	conf.UserEventSizeLimit = 2048
	ch := make(chan serf.Event, 1024)
	conf.EventCh = ch
	ml := memberlist.DefaultLANConfig()
	ml.Name, ml.BindAddr, ml.BindPort = name, addr, 7946
	ml.Logger = conf.Logger
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{addr}, BindPort: 7946, Logger: conf.Logger})
	if err != nil {
		return nil, err
	}
	ml.Transport = newCountingTransport(nt, &sn.sentBytes)
	conf.MemberlistConfig = ml
	if sn.s, err = serf.Create(conf); err != nil {
		return nil, err
	}
	go func() {
		for {
			select {
			case e := <-ch:
				if ue, ok := e.(serf.UserEvent); ok {
					sn.mu.Lock()
					sn.got[ue.Name] = true
					sn.mu.Unlock()
				}
			case <-sn.done:
				return
			}
		}
	}()
	go sn.s.Join([]string{seed}, true)
	return sn, nil
}

func (sn *serfBenchNode) alive() int {
	c := 0
	for _, m := range sn.s.Members() {
		if m.Status == serf.StatusAlive {
			c++
		}
	}
	return c
}

// announce sends a user event of the size of the signed service announcement the
// patronus variant sends (554 bytes).
func (sn *serfBenchNode) announce(i int) (string, error) {
	key := "a" + strconv.Itoa(i)
	return key, sn.s.UserEvent(key, make([]byte, 554), false)
}

func (sn *serfBenchNode) has(key string) bool {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	return sn.got[key]
}
func (sn *serfBenchNode) sent() uint64 { return sn.sentBytes.Load() }
func (sn *serfBenchNode) stop() {
	sn.s.Leave()
	sn.s.Shutdown()
	close(sn.done)
}

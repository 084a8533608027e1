package tunneltest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/probe"
	"github.com/patronus/patronus/wanem"
)

// The follow lab: the two gateways reach each other over two WAN paths through a "wan"
// namespace W, every UDP flow of a path (WireGuard and probes, each direction) through a
// wanem relay of its own in W, like scripts/lab/lab.sh's WAN links:
//
//	A p1 10.71.1.1 ── W 10.71.1.2 (relays of path 1 towards B) ┐
//	A p2 10.71.2.1 ── W 10.71.2.2 (relays of path 2 towards B) ├─ W 10.72.0.1/16 ── B p0 10.72.0.2
//	            relays of path i towards A: W 10.72.i.1 ────────┘
//
// Each gateway has one WireGuard device with one peer (no per-path devices) and probes
// both paths (probe.PathsFromConfig from its remote-clusters entry); as in the agent
// (agent/paths.go followTunnel), after every probe tick the endpoint of the path selected
// for the default class goes to its reconciler (tunnel.PathEndpoints, SetPathEndpoints).
type followSide struct {
	*side
	rc     config.RemoteCluster // its remote-clusters entry for the other side
	prober *probe.Prober
}

type followLab struct {
	a, b   *followSide
	w      ns.NetNS
	relays [2][]*wanem.Relay // per path: every relay of it
}

func peerEndpoint(s *side) string {
	st, err := s.dev.State()
	if err != nil || len(st.Peers) != 1 || st.Peers[0].Endpoint == nil {
		return ""
	}
	return st.Peers[0].Endpoint.String()
}

func newFollowLab(t *testing.T, interval time.Duration) *followLab {
	t.Helper()
	a0, b0 := newPair(t) // pods, bridges, devices, reconcilers (its direct underlay is unused)
	l := &followLab{a: &followSide{side: a0}, b: &followSide{side: b0}}
	l.w = enforcetest.NewNS(t, a0.gwName[:len(a0.gwName)-1]+"w")
	link := func(x ns.NetNS, xn string, y ns.NetNS, yn string) {
		must(t, x.Do(func(ns.NetNS) error {
			return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: xn}, PeerName: yn, PeerNamespace: netlink.NsFd(int(y.Fd()))})
		}))
	}
	link(a0.gw, "p1", l.w, "a1")
	link(a0.gw, "p2", l.w, "a2")
	link(b0.gw, "p0", l.w, "b0")
	pf := netip.MustParsePrefix
	must(t, a0.gw.Do(func(ns.NetNS) error {
		return errorsJoin(addrUp("p1", pf("10.71.1.1/24")), addrUp("p2", pf("10.71.2.1/24")))
	}))
	must(t, b0.gw.Do(func(ns.NetNS) error { return addrUp("p0", pf("10.72.0.2/16")) }))
	must(t, l.w.Do(func(ns.NetNS) error {
		return errorsJoin(up("lo"), addrUp("a1", pf("10.71.1.2/24")), addrUp("a2", pf("10.71.2.2/24")),
			addrUp("b0", pf("10.72.0.1/16")), addrUp("b0", pf("10.72.1.1/32")), addrUp("b0", pf("10.72.2.1/32")))
	}))

	ctx, cancel := context.WithCancel(context.Background())
	var run sync.WaitGroup
	t.Cleanup(func() { cancel(); run.Wait() })
	// Path 2 is the slower one (10 ms more each way). It starts blackholed (settle lifts
	// it): best-effort takes the first path that answers and does not fail back while the
	// scores differ by less than the margin, so on a loaded machine where path 1's first
	// answers came late a gateway used to start, and stay, on path 2.
	relay := func(i int, listen, target string) {
		var r *wanem.Relay
		must(t, l.w.Do(func(ns.NetNS) (err error) {
			r, err = wanem.New(wanem.Options{Listen: listen, Target: target, Impairment: wanem.Impairment{Delay: time.Duration(i) * 10 * time.Millisecond, Blackhole: i == 1}})
			return err
		}))
		l.relays[i] = append(l.relays[i], r)
		run.Go(func() { _ = r.Run(ctx) })
	}
	wgPort, prPort := strconv.Itoa(wg.DefaultPort), strconv.Itoa(probe.DefaultPort)
	for i := range 2 {
		toB, toA := fmt.Sprintf("10.71.%d.2", i+1), fmt.Sprintf("10.72.%d.1", i+1)
		aAddr := fmt.Sprintf("10.71.%d.1", i+1)
		for _, port := range []string{wgPort, prPort} {
			relay(i, net.JoinHostPort(toB, port), net.JoinHostPort("10.72.0.2", port))
			relay(i, net.JoinHostPort(toA, port), net.JoinHostPort(aAddr, port))
		}
	}
	// Each side's remote-clusters entry for the other: the primary endpoint (what the
	// other gateway announces) crosses path 1, the extra path path 2.
	l.a.rc = config.RemoteCluster{ID: b0.cluster, Endpoint: "10.71.1.2:" + wgPort, CIDR: b0.podCIDR, Paths: []string{"10.71.2.2:" + wgPort}}
	l.b.rc = config.RemoteCluster{ID: a0.cluster, Endpoint: "10.72.1.1:" + wgPort, CIDR: a0.podCIDR, Paths: []string{"10.72.2.1:" + wgPort}}

	for _, s := range []*followSide{l.a, l.b} {
		other := l.b
		if s == l.b {
			other = l.a
		}
		var resp *probe.Responder
		must(t, s.gw.Do(func(ns.NetNS) (err error) {
			resp, err = probe.NewResponder(":" + prPort)
			return err
		}))
		run.Go(func() { _ = resp.Run(ctx) })
		ps, err := probe.PathsFromConfig([]config.RemoteCluster{s.rc}, 0)
		must(t, err)
		if len(ps) != 2 {
			t.Fatalf("%s: %d paths from %+v", s.cluster, len(ps), s.rc)
		}
		rec := s.rec
		rcs := []config.RemoteCluster{s.rc}
		var pr *probe.Prober
		must(t, s.gw.Do(func(ns.NetNS) (err error) {
			pr, err = probe.New(probe.Options{Paths: ps, Config: paths.Config{Interval: interval},
				AfterTick: func(time.Time) {
					sel := map[string]string{}
					if x, ok := pr.Monitor().Selection(paths.Requirement{Dst: s.rc.ID, Class: paths.BestEffort}); ok && x.PathID != "" && x.Condition != paths.CondNoPathUp {
						sel[s.rc.ID] = x.PathID
					}
					rec.SetPathEndpoints(tunnel.PathEndpoints(rcs, sel))
				}})
			return err
		}))
		s.prober = pr
		run.Go(func() { _ = pr.Run(ctx) })
		// The other gateway's verified announcement: its key, the primary endpoint as
		// this side reaches it, its pod CIDR.
		ann := tunnel.Announcement(other.spec.PrivateKey.PublicKey(), []netip.AddrPort{netip.MustParseAddrPort(s.rc.Endpoint)}, []netip.Prefix{other.podCIDR})
		ann.Cluster, ann.Origin = other.cluster, other.cluster+"-gw"
		cluster := s.cluster
		run.Go(func() {
			_ = rec.Run(ctx, fixedState{ann}, func() tunnel.Input {
				return tunnel.Input{LocalCluster: cluster, Gateway: true, Keepalive: tunnel.DefaultKeepalive}
			}, 0, 0)
		})
	}
	return l
}

func errorsJoin(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// fixedState is a verified mesh state that does not change.
type fixedState []announce.Announcement

func (s fixedState) List() []announce.Announcement { return s }
func (s fixedState) Version() uint64               { return 1 }

func (l *followLab) blackhole(t *testing.T, i int, on bool) {
	t.Helper()
	for _, r := range l.relays[i] {
		imp := r.Impairment()
		imp.Blackhole = on
		must(t, r.Set(imp))
	}
}

// settle waits until both gateways select path 1 (path 2 is blackholed from the start),
// then lifts path 2's blackhole and waits until both see path 2 up: both paths answer,
// the flows ride path 1.
func (l *followLab) settle(t *testing.T) {
	t.Helper()
	a, b := l.a, l.b
	l.waitSelected(t, 30*time.Second, b.cluster+"/10.71.1.2", a.cluster+"/10.72.1.1")
	l.blackhole(t, 1, false)
	deadline := time.Now().Add(30 * time.Second)
	for !pathUp(a, b.cluster+"/10.71.2.2") || !pathUp(b, a.cluster+"/10.72.2.1") {
		if time.Now().After(deadline) {
			t.Fatal("path 2 not up on both gateways 30 s after lifting its blackhole")
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.waitSelected(t, 5*time.Second, b.cluster+"/10.71.1.2", a.cluster+"/10.72.1.1")
}

func (s *followSide) selected() string {
	x, _ := s.prober.Monitor().Selection(paths.Requirement{Dst: s.rc.ID, Class: paths.BestEffort})
	return x.PathID
}

func (l *followLab) waitSelected(t *testing.T, d time.Duration, pathA, pathB string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for l.a.selected() != pathA || l.b.selected() != pathB {
		if time.Now().After(deadline) {
			t.Fatalf("selections A %q B %q, want %q %q", l.a.selected(), l.b.selected(), pathA, pathB)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pingFlow is `ping -D -i 0.05` from pod A to pod B; replies are the reply timestamps.
type pingFlow struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	replies []time.Time
	sent    int
	done    chan struct{}
}

func startPing(t *testing.T, from string, to netip.Addr, every time.Duration) *pingFlow {
	t.Helper()
	f := &pingFlow{done: make(chan struct{})}
	f.cmd = exec.Command("ip", "netns", "exec", from, "ping", "-D", "-n", "-i", strconv.FormatFloat(every.Seconds(), 'f', 3, 64), to.String())
	out, err := f.cmd.StdoutPipe()
	must(t, err)
	must(t, f.cmd.Start())
	go func() {
		defer close(f.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "[") || !strings.Contains(line, "bytes from") {
				continue
			}
			ts, err := strconv.ParseFloat(line[1:strings.IndexByte(line, ']')], 64)
			if err != nil {
				continue
			}
			sec := int64(ts)
			f.mu.Lock()
			f.replies = append(f.replies, time.Unix(sec, int64((ts-float64(sec))*1e9)))
			f.mu.Unlock()
		}
	}()
	t.Cleanup(f.stop)
	return f
}

func (f *pingFlow) stop() {
	if f.cmd.Process != nil && f.cmd.ProcessState == nil {
		_ = f.cmd.Process.Kill()
		<-f.done
		_ = f.cmd.Wait()
	}
}

func (f *pingFlow) repliesSince(at time.Time) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, _ := slices.BinarySearchFunc(f.replies, at, func(x, y time.Time) int { return x.Compare(y) })
	return slices.Clone(f.replies[i:])
}

// gapAround is the longest time without a reply from the last reply before at to the
// first one after it, and that first reply.
func (f *pingFlow) gapAround(at time.Time) (time.Duration, time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, _ := slices.BinarySearchFunc(f.replies, at, func(x, y time.Time) int { return x.Compare(y) })
	if i == 0 || i >= len(f.replies) {
		return 0, time.Time{}, false
	}
	var gap time.Duration
	for j := i; j < len(f.replies) && f.replies[j].Sub(at) < 5*time.Second; j++ {
		gap = max(gap, f.replies[j].Sub(f.replies[j-1]))
	}
	return gap, f.replies[i], true
}

// TestTunnelFollowsPathSelection: with one WireGuard peer per remote cluster, a ping
// from a pod in A to a pod in B keeps going when the WAN path it rides is blackholed:
// both gateways' probes select the other path and each points its peer there. The gap is
// measured and logged; what is asserted is that the flow continued on path 2 (both
// directions: every reply crossed back), and, path 1 restored and path 2 blackholed, on
// path 1 again with the announced endpoints.
func TestTunnelFollowsPathSelection(t *testing.T) {
	const interval = 50 * time.Millisecond
	l := newFollowLab(t, interval)
	a, b := l.a, l.b
	p1A, p2A := b.cluster+"/10.71.1.2", b.cluster+"/10.71.2.2"
	p1B, p2B := a.cluster+"/10.72.1.1", a.cluster+"/10.72.2.1"
	l.settle(t)
	waitTunnel(t, a.side, b.side)
	if ea, eb := a.rec.Status().Tunnels, b.rec.Status().Tunnels; len(ea) != 1 || ea[0].Endpoint.String() != a.rc.Endpoint || len(eb) != 1 || eb[0].Endpoint.String() != b.rc.Endpoint {
		t.Fatalf("on the primary path the announced endpoints are used: A %+v, B %+v", ea, eb)
	}

	f := startPing(t, a.podName, b.podIP, 50*time.Millisecond)
	time.Sleep(time.Second)
	if n := len(f.repliesSince(time.Now().Add(-time.Second))); n < 10 {
		t.Fatalf("only %d replies in the second before the blackhole", n)
	}
	// Path 2's WireGuard relays: [0] towards B (A's sends, and B's answers to the address
	// they came from if B's peer roamed there), [1] towards A (B's sends to its endpoint).
	before := [2]wanem.Stats{l.relays[1][0].Stats(), l.relays[1][1].Stats()}
	at := time.Now()
	l.blackhole(t, 0, true)
	l.waitSelected(t, 5*time.Second, p2A, p2B)
	moved := time.Now()
	time.Sleep(2 * time.Second)
	after := f.repliesSince(moved.Add(500 * time.Millisecond))
	gap, _, ok := f.gapAround(at)
	if !ok || len(after) < 10 {
		t.Fatalf("the flow did not continue after the blackhole of path 1: %d replies from 0.5 s after both selections moved (%v after the blackhole); devices A %s B %s",
			len(after), moved.Sub(at).Round(time.Millisecond), peerEndpoint(a.side), peerEndpoint(b.side))
	}
	t.Logf("blackhole of path 1 under a 50 ms ping: selections on path 2 after %v, longest gap between replies %v (probe interval %v x 3 misses)",
		moved.Sub(at).Round(time.Millisecond), gap.Round(time.Millisecond), interval)
	// Each side points its peer at its own selection (the reconcilers' plans), and the
	// WireGuard packets now cross path 2's relays.
	if ea, eb := a.rec.Status().Tunnels, b.rec.Status().Tunnels; ea[0].Endpoint.String() != a.rc.Paths[0] || eb[0].Endpoint.String() != b.rc.Paths[0] {
		t.Fatalf("after the failover the tunnels' endpoints are A %s B %s, want %s and %s", ea[0].Endpoint, eb[0].Endpoint, a.rc.Paths[0], b.rc.Paths[0])
	}
	toB := l.relays[1][0].Stats().ForwardOut - before[0].ForwardOut
	toA := l.relays[1][0].Stats().ReverseOut - before[0].ReverseOut + l.relays[1][1].Stats().ForwardOut - before[1].ForwardOut
	t.Logf("path 2 carried %d WireGuard packets towards B and %d towards A", toB, toA)
	if toB < 20 || toA < 20 {
		t.Fatalf("path 2 carried %d WireGuard packets towards B and %d towards A since the blackhole: the tunnel did not move both ways", toB, toA)
	}

	// Back to the primary path: path 1 answers again (best-effort does not fail back by
	// itself here: the two paths' scores differ by less than the 10-point margin), then
	// path 2 is blackholed; both move to path 1 and the announced endpoints.
	l.blackhole(t, 0, false)
	deadline := time.Now().Add(15 * time.Second)
	for !pathUp(a, p1A) || !pathUp(b, p1B) {
		if time.Now().After(deadline) {
			t.Fatal("path 1 not up again 15 s after lifting its blackhole")
		}
		time.Sleep(20 * time.Millisecond)
	}
	at2 := time.Now()
	l.blackhole(t, 1, true)
	l.waitSelected(t, 5*time.Second, p1A, p1B)
	back := time.Now()
	time.Sleep(2 * time.Second)
	if n := len(f.repliesSince(back.Add(500 * time.Millisecond))); n < 10 {
		t.Fatalf("only %d replies after moving back to path 1", n)
	}
	if ea, eb := a.rec.Status().Tunnels, b.rec.Status().Tunnels; ea[0].Endpoint.String() != a.rc.Endpoint || eb[0].Endpoint.String() != b.rc.Endpoint {
		t.Fatalf("back on the primary path the tunnels' endpoints are A %s B %s, want the announced %s and %s", ea[0].Endpoint, eb[0].Endpoint, a.rc.Endpoint, b.rc.Endpoint)
	}
	gap2, _, _ := f.gapAround(at2)
	t.Logf("blackhole of path 2: back on path 1 (the announced endpoints) after %v, longest gap between replies %v",
		back.Sub(at2).Round(time.Millisecond), gap2.Round(time.Millisecond))
}

func pathUp(s *followSide, id string) bool {
	for _, p := range s.prober.Monitor().Snapshot(time.Now()).Paths {
		if p.ID == id {
			return p.State == paths.StateUp
		}
	}
	return false
}

// TestTunnelFollowFailoverBench measures the outage a pod sees when the path its tunnel
// rides is blackholed, in the mode without per-path devices (one WireGuard peer per
// remote cluster whose endpoint follows the selection): a ping every 10 ms from pod A to
// pod B runs through every round; each round blackholes the path both selections use,
// records the longest time between replies around the cut, lifts the blackhole and waits
// for the path to answer again. A measurement, not a pass/fail test: it runs only with
// PATRONUS_BENCH_FOLLOW=1 (PATRONUS_BENCH_ROUNDS, default 20) and logs p50/p99/max next
// to the detection floor (probe interval × 3 misses).
func TestTunnelFollowFailoverBench(t *testing.T) {
	if os.Getenv("PATRONUS_BENCH_FOLLOW") != "1" {
		t.Skip("a benchmark: set PATRONUS_BENCH_FOLLOW=1 (and PATRONUS_BENCH_ROUNDS, default 20)")
	}
	rounds := 20
	if s, err := strconv.Atoi(os.Getenv("PATRONUS_BENCH_ROUNDS")); err == nil && s > 0 {
		rounds = s
	}
	const interval, misses = 50 * time.Millisecond, 3
	l := newFollowLab(t, interval)
	a, b := l.a, l.b
	ids := [2][2]string{{b.cluster + "/10.71.1.2", a.cluster + "/10.72.1.1"}, {b.cluster + "/10.71.2.2", a.cluster + "/10.72.2.1"}}
	l.settle(t)
	waitTunnel(t, a.side, b.side)
	f := startPing(t, a.podName, b.podIP, 10*time.Millisecond)
	time.Sleep(time.Second)
	var gaps []time.Duration
	on := 0
	for r := range rounds {
		time.Sleep(300*time.Millisecond + time.Duration(r%7)*interval/7) // phase against the probes
		cut := time.Now()
		l.blackhole(t, on, true)
		l.waitSelected(t, 5*time.Second, ids[1-on][0], ids[1-on][1])
		time.Sleep(time.Second)
		gap, _, ok := f.gapAround(cut)
		if n := len(f.repliesSince(time.Now().Add(-300 * time.Millisecond))); !ok || n < 10 {
			t.Fatalf("round %d: the flow did not continue after the blackhole of path %d (%d replies in the last 300 ms)", r+1, on+1, n)
		}
		gaps = append(gaps, gap)
		t.Logf("round %d: blackholed path %d, longest gap %v", r+1, on+1, gap.Round(time.Millisecond))
		l.blackhole(t, on, false)
		deadline := time.Now().Add(15 * time.Second)
		for !pathUp(a, ids[on][0]) || !pathUp(b, ids[on][1]) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: path %d not up again", r+1, on+1)
			}
			time.Sleep(20 * time.Millisecond)
		}
		on = 1 - on
	}
	slices.Sort(gaps)
	q := func(p float64) time.Duration { return gaps[min(len(gaps)-1, int(p*float64(len(gaps))))] }
	t.Logf("tunnel endpoint follows the selection (ping every 10 ms, probe interval %v, %d misses): %d blackholes, p50 %v p99 %v min %v max %v; floor interval×misses %v",
		interval, misses, len(gaps), q(0.5).Round(time.Millisecond), q(0.99).Round(time.Millisecond),
		gaps[0].Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond), interval*misses)
}

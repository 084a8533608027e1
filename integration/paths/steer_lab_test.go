package pathstest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/dataplane/qos"
	"github.com/patronus/patronus/dataplane/steer"
	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/probe"
	"github.com/patronus/patronus/wanem"
)

// steerLab is two clusters joined by two paths, each path its own WireGuard tunnel whose
// UDP goes through a wanem relay:
//
//	pod1 10.81.1.2 ─┐                        ┌─ relay1 ─┐
//	pod2 10.81.2.2 ─┤ A  wg-p1 ─a1/w1 (10.71.1.0/24)─ W ─wb/b0 (10.72.0.0/24)─ B ─ srv 10.82.1.2
//	                │    wg-p2 ─a2/w2 (10.71.2.0/24)─┘ relay2
//
// Cluster A's pods are 10.81.0.0/16, B's 10.82.0.0/16. Inside tunnel i, A is 10.90.i.1 and
// B 10.90.i.2 (B answers probes there), so probes and pod traffic share the path exactly.
// A runs the prober and steers its pods; B only answers on the path a connection came by.
type steerLab struct {
	relays [2]*wanem.Relay
	prober *probe.Prober
	steerA *steer.Steerer
	pods   [2]ns.NetNS // pod1, pod2 in A
	srv    ns.NetNS
	nsA    ns.NetNS
	moves  chan move
	cfg    paths.Config
	mu     sync.Mutex
	errs   []error
	wasUp  map[string]bool // prober goroutine only
	// lastBurst is how long the last burst took (the probes that crossed meanwhile).
	lastBurst time.Duration
}

var (
	clusterA = netip.MustParsePrefix("10.81.0.0/16")
	clusterB = netip.MustParsePrefix("10.82.0.0/16")
	srvAddr  = netip.MustParseAddr("10.82.1.2")
	podAddrs = [2]netip.Addr{netip.MustParseAddr("10.81.1.2"), netip.MustParseAddr("10.81.2.2")}
	pathDevs = [2]string{"wg-p1", "wg-p2"}
)

func sysctl(n ns.NetNS, kv ...string) error {
	return n.Do(func(ns.NetNS) error {
		for i := 0; i+1 < len(kv); i += 2 {
			if err := os.WriteFile(filepath.Join("/proc/sys", kv[i]), []byte(kv[i+1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s: %w", kv[i], err)
			}
		}
		return nil
	})
}

func routeAdd(dst netip.Prefix, dev string, gw netip.Addr) error {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return err
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)}}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	}
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s dev %s: %w", dst, dev, err)
	}
	return nil
}

// newSteerLab builds everything; rtt are the paths' round-trip delays, bw their
// configured bandwidths, pods the classes of pod1 and pod2.
func newSteerLab(t testing.TB, cfg paths.Config, rtt [2]time.Duration, bw [2]float64, pods [2]steer.PodClass, reqs []paths.Requirement) *steerLab {
	t.Helper()
	enforcetest.RequireRoot(t)
	id := fmt.Sprintf("%06x", time.Now().UnixNano()&0xffffff)
	l := &steerLab{moves: make(chan move, 1000), cfg: cfg.WithDefaults(), wasUp: map[string]bool{}}
	nsA := enforcetest.NewNS(t, "pt-ps-"+id+"-a")
	nsW := enforcetest.NewNS(t, "pt-ps-"+id+"-w")
	nsB := enforcetest.NewNS(t, "pt-ps-"+id+"-b")
	l.nsA = nsA
	l.pods[0] = enforcetest.NewNS(t, "pt-ps-"+id+"-p1")
	l.pods[1] = enforcetest.NewNS(t, "pt-ps-"+id+"-p2")
	l.srv = enforcetest.NewNS(t, "pt-ps-"+id+"-s")
	for _, n := range []ns.NetNS{nsA, nsB} {
		must(t, sysctl(n, "net/ipv4/ip_forward", "1", "net/ipv4/conf/all/rp_filter", "0", "net/ipv4/conf/default/rp_filter", "0"))
	}
	must(t, veth(nsA, "a1", nsW, "w1"))
	must(t, veth(nsA, "a2", nsW, "w2"))
	must(t, veth(nsW, "wb", nsB, "b0"))
	for i, p := range l.pods {
		must(t, veth(nsA, fmt.Sprintf("pod%d", i+1), p, "eth0"))
	}
	must(t, veth(nsB, "srv", l.srv, "eth0"))
	must(t, nsW.Do(func(ns.NetNS) error {
		return firstErr(addrUp("lo", "127.0.0.1/8"), addrUp("w1", "10.71.1.2/24"), addrUp("w2", "10.71.2.2/24"), addrUp("wb", "10.72.0.1/24"))
	}))
	must(t, nsA.Do(func(ns.NetNS) error {
		return firstErr(addrUp("lo", "127.0.0.1/8"), addrUp("a1", "10.71.1.1/24"), addrUp("a2", "10.71.2.1/24"),
			addrUp("pod1", "10.81.1.1/24"), addrUp("pod2", "10.81.2.1/24"))
	}))
	must(t, nsB.Do(func(ns.NetNS) error {
		return firstErr(addrUp("lo", "127.0.0.1/8"), addrUp("b0", "10.72.0.2/24"), addrUp("srv", "10.82.1.1/24"))
	}))
	for i, p := range l.pods {
		must(t, p.Do(func(ns.NetNS) error {
			return firstErr(addrUp("lo", "127.0.0.1/8"), addrUp("eth0", podAddrs[i].String()+"/24"),
				routeAdd(netip.MustParsePrefix("0.0.0.0/0"), "eth0", netip.AddrFrom4([4]byte{10, 81, byte(i + 1), 1})))
		}))
	}
	must(t, l.srv.Do(func(ns.NetNS) error {
		return firstErr(addrUp("lo", "127.0.0.1/8"), addrUp("eth0", srvAddr.String()+"/24"),
			routeAdd(netip.MustParsePrefix("0.0.0.0/0"), "eth0", netip.MustParseAddr("10.82.1.1")))
	}))
	// Pods send at most what the tunnels carry (WireGuard MTU 1420), as a CNI sets it.
	for _, p := range append(l.pods[:], l.srv) {
		must(t, p.Do(func(ns.NetNS) error {
			link, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.LinkSetMTU(link, 1400)
		}))
	}

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	errs := make(chan error, 8)
	started := 0
	start := func(f func(context.Context) error) {
		started++
		go func() { errs <- f(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for range started {
			if err := <-errs; err != nil {
				t.Errorf("lab goroutine: %v", err)
			}
		}
	})

	// One tunnel per path: its own keys, ports and relay.
	for i := range 2 {
		ka, _ := wgtypes.GeneratePrivateKey()
		kb, _ := wgtypes.GeneratePrivateKey()
		port := 51821 + i
		da, err := wg.Open(wg.Options{NetNS: nsA.Path(), Mode: wg.ModeUserspace}, wg.Spec{Name: pathDevs[i], ListenPort: port, PrivateKey: ka})
		must(t, err)
		t.Cleanup(func() { da.Close() })
		db, err := wg.Open(wg.Options{NetNS: nsB.Path(), Mode: wg.ModeUserspace}, wg.Spec{Name: pathDevs[i], ListenPort: port, PrivateKey: kb})
		must(t, err)
		t.Cleanup(func() { db.Close() })
		listen := netip.MustParseAddrPort(fmt.Sprintf("10.71.%d.2:51820", i+1))
		must(t, nsW.Do(func(ns.NetNS) (err error) {
			l.relays[i], err = wanem.New(wanem.Options{Listen: listen.String(), Target: fmt.Sprintf("10.72.0.2:%d", port),
				Impairment: wanem.Impairment{Delay: rtt[i] / 2}})
			return err
		}))
		start(l.relays[i].Run)
		tunA := netip.MustParsePrefix(fmt.Sprintf("10.90.%d.1/32", i+1))
		tunB := netip.MustParsePrefix(fmt.Sprintf("10.90.%d.2/32", i+1))
		_, err = da.Configure([]wg.Peer{{PublicKey: kb.PublicKey(), Endpoint: listen, AllowedIPs: []netip.Prefix{clusterB, tunB}}})
		must(t, err)
		_, err = db.Configure([]wg.Peer{{PublicKey: ka.PublicKey(), AllowedIPs: []netip.Prefix{clusterA, tunA}}})
		must(t, err)
		must(t, nsA.Do(func(ns.NetNS) error {
			return firstErr(addrUp(pathDevs[i], fmt.Sprintf("10.90.%d.1/24", i+1)))
		}))
		must(t, nsB.Do(func(ns.NetNS) error {
			return firstErr(addrUp(pathDevs[i], fmt.Sprintf("10.90.%d.2/24", i+1)))
		}))
	}
	// Unsteered traffic (and B's answers before steering sees a connection) uses path 1.
	must(t, nsA.Do(func(ns.NetNS) error { return routeAdd(clusterB, pathDevs[0], netip.Addr{}) }))
	must(t, nsB.Do(func(ns.NetNS) error { return routeAdd(clusterA, pathDevs[0], netip.Addr{}) }))

	var resp *probe.Responder
	must(t, nsB.Do(func(ns.NetNS) (err error) {
		resp, err = probe.NewResponder(fmt.Sprintf("0.0.0.0:%d", probe.DefaultPort))
		return err
	}))
	start(resp.Run)

	devs := map[string]string{pathIDs[0]: pathDevs[0], pathIDs[1]: pathDevs[1]}
	dsts := map[string][]netip.Prefix{"cluster-b": {clusterB}}
	// B: no pods of its own to steer; it answers on the path each connection came by.
	steerB := steer.New(steer.Options{Kernel: steer.Netlink{NetNS: nsB.Path()}, Devices: devs,
		Destinations: map[string][]netip.Prefix{"cluster-a": {clusterA}}})
	_, err := steerB.Update(paths.Snapshot{Paths: []paths.PathStatus{
		{PathSpec: paths.PathSpec{ID: pathIDs[0], Dst: "cluster-a"}, State: paths.StateUp},
		{PathSpec: paths.PathSpec{ID: pathIDs[1], Dst: "cluster-a"}, State: paths.StateUp}}})
	must(t, err)

	l.steerA = steer.New(steer.Options{Kernel: steer.Netlink{NetNS: nsA.Path()}, Devices: devs, Destinations: dsts,
		QoS: nsQoS{nsA}})
	for i := range pods {
		pods[i].IP = podAddrs[i]
	}
	l.steerA.SetPods(pods[:])
	var ps []probe.Path
	for i := range 2 {
		ps = append(ps, probe.Path{PathSpec: paths.PathSpec{ID: pathIDs[i], Src: pathDevs[i], Dst: "cluster-b",
			Remote: fmt.Sprintf("10.90.%d.2:%d", i+1, probe.DefaultPort), BandwidthMbps: bw[i]}, Device: pathDevs[i], Mark: steer.ProbeMark})
	}
	reqs = append(reqs, steer.Requirements(pods[:], []string{"cluster-b"})...)
	must(t, nsA.Do(func(ns.NetNS) (err error) {
		l.prober, err = probe.New(probe.Options{Paths: ps, Config: cfg, Requirements: reqs,
			OnChange: func(c paths.Change) { l.moves <- move{c, time.Now()} },
			AfterTick: func(now time.Time) {
				snap := l.prober.Monitor().Snapshot(now)
				for _, p := range snap.Paths {
					if p.State != paths.StateUp && l.wasUp[p.ID] {
						t.Logf("%s: path %s %s (sent %d lost %d rtt %.1fms)", now.Format("15:04:05.000"), p.ID, p.State, p.Sent, p.Lost, p.LatencyMs)
					}
					l.wasUp[p.ID] = p.State == paths.StateUp
				}
				if _, err := l.steerA.Update(snap); err != nil {
					l.mu.Lock()
					l.errs = append(l.errs, err)
					l.mu.Unlock()
				}
			}})
		return err
	}))
	start(l.prober.Run)
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, err := range l.errs[:min(len(l.errs), 3)] {
			t.Errorf("steering update: %v", err)
		}
	})
	return l
}

func (l *steerLab) selected(c paths.Class) string {
	s, _ := l.prober.Monitor().Selection(paths.Requirement{Dst: "cluster-b", Class: c})
	return s.PathID
}

func (l *steerLab) waitFor(t testing.TB, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; state: %s", d, what, dumpMonitor(l.prober.Monitor()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dumpMonitor(m *paths.Monitor) string { return dumpSnapshot(m.Snapshot(time.Now())) }

func (l *steerLab) setPath(t testing.TB, i int, f func(*wanem.Impairment)) {
	t.Helper()
	imp := l.relays[i].Impairment()
	f(&imp)
	must(t, l.relays[i].Set(imp))
}

// forwarded is how many datagrams the relays carried towards B so far.
func (l *steerLab) forwarded() [2]uint64 {
	return [2]uint64{l.relays[0].Stats().ForwardIn, l.relays[1].Stats().ForwardIn}
}

// sink counts datagrams at the server and records the arrival time of every sequence
// number (the flows below send an 8-byte sequence).
type sink struct {
	mu      sync.Mutex
	arrived map[uint64]time.Time
	count   int
}

func (l *steerLab) serveUDP(t testing.TB, port int) *sink {
	t.Helper()
	var c net.PacketConn
	must(t, l.srv.Do(func(ns.NetNS) (err error) {
		c, err = net.ListenPacket("udp4", netip.AddrPortFrom(srvAddr, uint16(port)).String())
		return err
	}))
	t.Cleanup(func() { c.Close() })
	s := &sink{arrived: map[uint64]time.Time{}}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			now := time.Now()
			s.mu.Lock()
			s.count++
			if n >= 8 {
				s.arrived[binary.BigEndian.Uint64(buf)] = now
			}
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *sink) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// dialUDP opens a UDP socket in pod i towards the server: one connection (5-tuple).
func (l *steerLab) dialUDP(t testing.TB, i, port int) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	must(t, l.pods[i].Do(func(ns.NetNS) error {
		cc, err := net.Dial("udp4", netip.AddrPortFrom(srvAddr, uint16(port)).String())
		if err == nil {
			c = cc.(*net.UDPConn)
		}
		return err
	}))
	t.Cleanup(func() { c.Close() })
	return c
}

// burst sends n datagrams from pod i on a new connection and returns how many each path's
// relay carried meanwhile, after the server received at least 90% of them.
func (l *steerLab) burst(t testing.TB, s *sink, i, port, n int) [2]uint64 {
	t.Helper()
	c := l.dialUDP(t, i, port)
	start := time.Now()
	before, got := l.forwarded(), s.received()
	buf := make([]byte, 64)
	for k := range n {
		binary.BigEndian.PutUint64(buf, uint64(k))
		if _, err := c.Write(buf); err != nil {
			t.Fatalf("pod%d send: %v", i+1, err)
		}
		if k%50 == 49 {
			time.Sleep(time.Millisecond) // keep the userspace tunnel's queues short
		}
	}
	// Wait for the whole burst (or no progress for 300ms): the userspace tunnel may still
	// hold some, which must not be counted as the next burst's.
	deadline := time.Now().Add(5 * time.Second)
	last, lastAt := -1, time.Now()
	for r := s.received() - got; r < n && time.Now().Before(deadline) && time.Since(lastAt) < 300*time.Millisecond; r = s.received() - got {
		if r != last {
			last, lastAt = r, time.Now()
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r := s.received() - got; r < n*9/10 {
		t.Fatalf("pod%d: the server received %d of %d datagrams", i+1, r, n)
	}
	after := l.forwarded()
	// Probes (and the tunnels' keepalives) cross both paths meanwhile: at most about two
	// per probe interval, which onPath allows on the other path.
	l.lastBurst = time.Since(start)
	return [2]uint64{after[0] - before[0], after[1] - before[1]}
}

// onPath checks that a burst's datagrams crossed path want (index) and not the other:
// the other path carries only probes and keepalives meanwhile.
func (l *steerLab) onPath(t testing.TB, who string, d [2]uint64, n int, want int) {
	t.Helper()
	other := 1 - want
	probes := uint64(2 * l.lastBurst / l.cfg.Interval)
	t.Logf("%s: %d datagrams in %v → relay p1 +%d, relay p2 +%d", who, n, l.lastBurst.Round(ms), d[0], d[1])
	if d[want] < uint64(n*9/10) || d[other] > uint64(n/4)+probes {
		t.Errorf("%s: expected its %d datagrams on %s, relays carried p1 +%d, p2 +%d", who, n, pathIDs[want], d[0], d[1])
	}
}

// logMoves logs the selection changes reported so far.
func (l *steerLab) logMoves(t testing.TB) {
	for {
		select {
		case m := <-l.moves:
			t.Logf("move %s %s max %v: %q → %q (%s) at %s", m.Dst, m.Class, m.MaxLatency, m.From, m.To, m.Reason, m.seen.Format("15:04:05.000"))
		default:
			return
		}
	}
}

// nsQoS runs dataplane/qos's netlink kernel inside a namespace (it works in the calling
// thread's).
type nsQoS struct{ n ns.NetNS }

func (q nsQoS) Installed(link string) (cs []qos.Class, err error) {
	derr := q.n.Do(func(ns.NetNS) error { cs, err = qos.Netlink{}.Installed(link); return nil })
	return cs, errors.Join(derr, err)
}

func (q nsQoS) Program(link string, p qos.Plan) error {
	return q.n.Do(func(ns.NetNS) error { return qos.Netlink{}.Program(link, p) })
}

func (q nsQoS) Remove(link string) error {
	return q.n.Do(func(ns.NetNS) error { return qos.Netlink{}.Remove(link) })
}

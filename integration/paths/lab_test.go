// Package pathstest runs path selection for real across network namespaces: gateway A
// reaches gateway B over two underlay paths (two veth pairs into a "wan" namespace), each
// through its own wanem relay; probes run over both and the selections are checked while
// the relays change delay and blackhole paths.
package pathstest

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/probe"
	"github.com/patronus/patronus/wanem"
)

// lab: A ─a1/w1 (10.71.1.0/24)─┐
//
//	A ─a2/w2 (10.71.2.0/24)─ W (relays) ─wb/b0 (10.72.0.0/24)─ B (responder)
type lab struct {
	relays [2]*wanem.Relay
	prober *probe.Prober
	moves  chan move
	cfg    paths.Config
}

type move struct {
	paths.Change
	seen time.Time
}

// Path ids and their configured bandwidth: p2 is the bulk path.
var pathIDs = [2]string{"p1", "p2"}
var bandwidth = [2]float64{100, 1000}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addrUp(name, cidr string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("addr %s on %s: %w", cidr, name, err)
	}
	return netlink.LinkSetUp(l)
}

// veth creates a pair from namespace x (name xn) to y (name yn).
func veth(x ns.NetNS, xn string, y ns.NetNS, yn string) error {
	tmp := "pttmp" + strconv.Itoa(os.Getpid()%100000)
	err := x.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: xn}, PeerName: tmp, PeerNamespace: netlink.NsFd(int(y.Fd()))})
	})
	if err != nil {
		return fmt.Errorf("veth %s: %w", xn, err)
	}
	return y.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(tmp)
		if err != nil {
			return err
		}
		return netlink.LinkSetName(l, yn)
	})
}

// newLab builds the namespaces, relays (path RTT delays rtt[0], rtt[1]), responder and
// prober; everything stops at cleanup.
func newLab(t testing.TB, cfg paths.Config, rtt [2]time.Duration, reqs []paths.Requirement) *lab {
	t.Helper()
	enforcetest.RequireRoot(t)
	id := strconv.FormatInt(time.Now().UnixNano()%0xffffff, 16)
	nsA := enforcetest.NewNS(t, "pt-pa-"+id+"-a")
	nsW := enforcetest.NewNS(t, "pt-pa-"+id+"-w")
	nsB := enforcetest.NewNS(t, "pt-pa-"+id+"-b")
	must(t, veth(nsA, "a1", nsW, "w1"))
	must(t, veth(nsA, "a2", nsW, "w2"))
	must(t, veth(nsW, "wb", nsB, "b0"))
	must(t, nsA.Do(func(ns.NetNS) error {
		return firstErr(addrUp("lo", "127.0.0.1/8"), addrUp("a1", "10.71.1.1/24"), addrUp("a2", "10.71.2.1/24"))
	}))
	must(t, nsW.Do(func(ns.NetNS) error {
		return firstErr(addrUp("lo", "127.0.0.1/8"), addrUp("w1", "10.71.1.2/24"), addrUp("w2", "10.71.2.2/24"), addrUp("wb", "10.72.0.1/24"))
	}))
	must(t, nsB.Do(func(ns.NetNS) error { return firstErr(addrUp("lo", "127.0.0.1/8"), addrUp("b0", "10.72.0.2/24")) }))

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

	// Sockets belong to the namespace they are created in; the goroutines that use them
	// may run anywhere.
	var resp *probe.Responder
	must(t, nsB.Do(func(ns.NetNS) (err error) {
		resp, err = probe.NewResponder(netip.AddrPortFrom(netip.MustParseAddr("10.72.0.2"), probe.DefaultPort).String())
		return err
	}))
	start(resp.Run)
	l := &lab{moves: make(chan move, 1000), cfg: cfg.WithDefaults()}
	var ps []probe.Path
	for i := range 2 {
		listen := fmt.Sprintf("10.71.%d.2:%d", i+1, probe.DefaultPort)
		must(t, nsW.Do(func(ns.NetNS) (err error) {
			l.relays[i], err = wanem.New(wanem.Options{Listen: listen, Target: resp.Addr().String(),
				Impairment: wanem.Impairment{Delay: rtt[i] / 2}})
			return err
		}))
		start(l.relays[i].Run)
		ps = append(ps, probe.Path{PathSpec: paths.PathSpec{ID: pathIDs[i], Src: fmt.Sprintf("a%d", i+1), Dst: "cluster-b",
			Remote: listen, BandwidthMbps: bandwidth[i]}, LocalAddr: fmt.Sprintf("10.71.%d.1", i+1), Device: fmt.Sprintf("a%d", i+1)})
	}
	must(t, nsA.Do(func(ns.NetNS) (err error) {
		l.prober, err = probe.New(probe.Options{Paths: ps, Config: cfg, Requirements: reqs,
			OnChange: func(c paths.Change) { l.moves <- move{c, time.Now()} }})
		return err
	}))
	start(l.prober.Run)
	return l
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func (l *lab) selected(c paths.Class) string {
	s, _ := l.prober.Monitor().Selection(paths.Requirement{Dst: "cluster-b", Class: c})
	return s.PathID
}

// setRTT makes path i's round trip d (the relay delays each direction by d/2).
func (l *lab) setRTT(t testing.TB, i int, d time.Duration) {
	t.Helper()
	imp := l.relays[i].Impairment()
	imp.Delay = d / 2
	must(t, l.relays[i].Set(imp))
}

func (l *lab) blackhole(t testing.TB, i int, on bool) {
	t.Helper()
	imp := l.relays[i].Impairment()
	imp.Blackhole = on
	must(t, l.relays[i].Set(imp))
}

// waitMove waits for the selection of class to move to path `to` and returns when the
// prober reported it.
func (l *lab) waitMove(t testing.TB, class paths.Class, to string, timeout time.Duration) move {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-l.moves:
			if m.Class == class && m.MaxLatency == 0 && m.To == to {
				return m
			}
		case <-deadline:
			t.Fatalf("%s did not move to %s within %v; state: %s", class, to, timeout, l.dump())
		}
	}
}

// dump renders the monitor's state for failure messages.
func (l *lab) dump() string { return dumpSnapshot(l.prober.Monitor().Snapshot(time.Now())) }

func dumpSnapshot(snap paths.Snapshot) string {
	var b strings.Builder
	for _, p := range snap.Paths {
		fmt.Fprintf(&b, "\n  %s %s since %s rtt %.1fms jitter %.1fms loss %.3f score %.1f sent %d lost %d",
			p.ID, p.State, p.Since.Format("15:04:05.000"), p.LatencyMs, p.JitterMs, p.Loss, p.Score, p.Sent, p.Lost)
	}
	for _, s := range snap.Selections {
		fmt.Fprintf(&b, "\n  %s max %gms → %q since %s (%s) %s", s.Class, s.MaxLatencyMs, s.PathID, s.Since.Format("15:04:05.000"), s.Reason, s.Condition)
	}
	return b.String()
}

func (l *lab) drain() {
	for {
		select {
		case <-l.moves:
		default:
			return
		}
	}
}

func (l *lab) waitFor(t testing.TB, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; state: %s", d, what, l.dump())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

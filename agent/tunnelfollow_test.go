package agent

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/qos"
)

// Without per-path devices, the gateway's tunnel reconciler gets the endpoint of the path
// selected for the default class (the primary path: none, so the announced one is used).
func TestPodPathsTunnelFollowsDefaultSelection(t *testing.T) {
	rc := config.RemoteCluster{ID: "lab-c2", Endpoint: "10.77.2.11:51820", Paths: []string{"10.78.2.34:51820"}}
	primary, second := "lab-c2/10.77.2.11", "lab-c2/10.78.2.34"
	for _, tc := range []struct {
		name   string
		def    qos.Class
		faster string // the path answering in 5 ms (the other in 40 ms)
		want   map[string]netip.AddrPort
	}{
		{"second path best", qos.BestEffort, second, map[string]netip.AddrPort{"lab-c2": netip.MustParseAddrPort("10.78.2.34:51820")}},
		{"primary path best: announced endpoint", qos.BestEffort, primary, map[string]netip.AddrPort{}},
		{"no default class configured: best-effort", "", second, map[string]netip.AddrPort{"lab-c2": netip.MustParseAddrPort("10.78.2.34:51820")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := paths.NewMonitor(paths.Config{Interval: 50 * time.Millisecond})
			t0 := time.Unix(1000, 0)
			if err := m.SetPaths([]paths.PathSpec{{ID: primary, Dst: "lab-c2"}, {ID: second, Dst: "lab-c2"}}, t0); err != nil {
				t.Fatal(err)
			}
			a := &agent{}
			pp := &podPaths{a: a, log: slog.New(slog.DiscardHandler), defClass: tc.def, dsts: []string{"lab-c2"}, remotes: []config.RemoteCluster{rc}}
			pp.followTunnel(m.Snapshot(t0)) // no tunnel dataplane: nothing to do
			rec := tunnel.NewReconciler(tunnel.ReconcilerOptions{})
			a.tunnel.rec.Store(rec)
			pp.followTunnel(m.Snapshot(t0)) // no selection yet: no path endpoints
			if rec.SetPathEndpoints(nil) {
				t.Fatal("path endpoints set before any selection")
			}
			for i := range 5 {
				at := t0.Add(time.Duration(i) * 50 * time.Millisecond)
				for _, id := range []string{primary, second} {
					rtt := 40 * time.Millisecond
					if id == tc.faster {
						rtt = 5 * time.Millisecond
					}
					m.Sent(id, uint64(i), at)
					m.Reply(id, uint64(i), at.Add(rtt))
				}
			}
			m.Tick(t0.Add(time.Second))
			pp.followTunnel(m.Snapshot(t0.Add(time.Second)))
			if rec.SetPathEndpoints(tc.want) {
				s, _ := m.Selection(paths.Requirement{Dst: "lab-c2", Class: paths.BestEffort})
				t.Fatalf("the reconciler did not have path endpoints %v (selection %+v)", tc.want, s)
			}
		})
	}
}

package probe

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/wanem"
)

func TestWire(t *testing.T) {
	p := packet{kind: kindRequest, session: 0xdeadbeef, seq: 42, ts: -7}
	b := p.marshal(nil)
	if len(b) != packetLen {
		t.Fatalf("len %d", len(b))
	}
	got, err := unmarshal(b)
	if err != nil || got != p {
		t.Fatalf("round trip %+v %v", got, err)
	}
	for name, bad := range map[string][]byte{
		"short":   b[:31],
		"magic":   append([]byte("XXXX"), b[4:]...),
		"version": append(append([]byte(nil), b[:4]...), append([]byte{9}, b[5:]...)...),
		"kind":    append(append([]byte(nil), b[:5]...), append([]byte{3}, b[6:]...)...),
	} {
		if _, err := unmarshal(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func run(t *testing.T, f func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
}

// lab is a responder behind two wanem relays on loopback: two paths to cluster "b".
type lab struct {
	relays [2]*wanem.Relay
	prober *Prober
	reg    *prometheus.Registry
	moves  chan paths.Change
}

func newLab(t *testing.T, cfg paths.Config) *lab {
	t.Helper()
	resp, err := NewResponder("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	run(t, resp.Run)
	l := &lab{reg: prometheus.NewRegistry(), moves: make(chan paths.Change, 100)}
	var ps []Path
	for i, d := range []time.Duration{5 * time.Millisecond, 30 * time.Millisecond} {
		r, err := wanem.New(wanem.Options{Listen: "127.0.0.1:0", Target: resp.Addr().String(), Impairment: wanem.Impairment{Delay: d / 2}})
		if err != nil {
			t.Fatal(err)
		}
		run(t, r.Run)
		l.relays[i] = r
		ps = append(ps, Path{PathSpec: paths.PathSpec{ID: []string{"p1", "p2"}[i], Src: "lo", Dst: "b",
			Remote: r.Addr().String(), BandwidthMbps: []float64{100, 1000}[i]}, LocalAddr: "127.0.0.1"})
	}
	l.prober, err = New(Options{Paths: ps, Config: cfg, Registerer: l.reg, LocalCluster: "a",
		OnChange: func(c paths.Change) { l.moves <- c }})
	if err != nil {
		t.Fatal(err)
	}
	run(t, l.prober.Run)
	return l
}

func (l *lab) selected(c paths.Class) string {
	s, _ := l.prober.Monitor().Selection(paths.Requirement{Dst: "b", Class: c})
	return s.PathID
}

func waitFor(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestProberSelectsAndFailsOver(t *testing.T) {
	cfg := paths.Config{Interval: 20 * time.Millisecond, DownAfter: 3, HoldDown: 500 * time.Millisecond}
	l := newLab(t, cfg)
	waitFor(t, 5*time.Second, "initial selections", func() bool {
		return l.selected(paths.LatencySensitive) == "p1" && l.selected(paths.Bulk) == "p2"
	})
	snap := l.prober.Monitor().Snapshot(time.Now())
	for _, p := range snap.Paths {
		t.Logf("%s: rtt %.2fms jitter %.2fms loss %.3f score %.1f", p.ID, p.LatencyMs, p.JitterMs, p.Loss, p.Score)
	}
	if snap.Paths[0].LatencyMs < 4 || snap.Paths[1].LatencyMs < 29 || snap.Paths[0].LatencyMs > snap.Paths[1].LatencyMs {
		t.Errorf("measured %v / %v ms for 5 / 30 ms paths", snap.Paths[0].LatencyMs, snap.Paths[1].LatencyMs)
	}
	// Blackhole the latency-sensitive path; the move is logged with its gap.
	for len(l.moves) > 0 {
		<-l.moves
	}
	if err := l.relays[0].Set(wanem.Impairment{Delay: 2500 * time.Microsecond, Blackhole: true}); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	var gap time.Duration
	waitFor(t, 3*time.Second, "failover", func() bool {
		select {
		case c := <-l.moves:
			if c.Class == paths.LatencySensitive && c.To == "p2" {
				gap = time.Since(cut)
				return true
			}
		default:
		}
		return false
	})
	floor := cfg.Interval * time.Duration(cfg.DownAfter)
	t.Logf("failover after %v (floor interval×misses = %v)", gap, floor)
	if gap > floor+500*time.Millisecond {
		t.Errorf("failover took %v", gap)
	}
	// Metrics carry the seed's name and labels.
	if n, err := testutil.GatherAndCount(l.reg, "patronus_path_score", "patronus_path_rtt_seconds", "patronus_path_loss_ratio"); err != nil || n != 6 {
		t.Errorf("gathered %d series, %v", n, err)
	}
	if err := testutil.GatherAndCompare(l.reg, strings.NewReader(`
# HELP patronus_path_up 1 when the path answers probes, 0 when down or never answered.
# TYPE patronus_path_up gauge
patronus_path_up{dst="b",path_id="p1",src="lo"} 0
patronus_path_up{dst="b",path_id="p2",src="lo"} 1
`), "patronus_path_up"); err != nil {
		t.Error(err)
	}
	// After the failover every class uses p2 (about 30ms).
	if n, err := testutil.GatherAndCount(l.reg, "patronus_pod_latency_ms"); err != nil || n != 3 {
		t.Errorf("patronus_pod_latency_ms: %d series, %v", n, err)
	}
	mfs, _ := l.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "patronus_pod_latency_ms" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if v := m.GetGauge().GetValue(); v < 25 || v > 500 {
				t.Errorf("pod latency %v ms with labels %v", v, m.GetLabel())
			}
		}
	}
	// The API handler serves the snapshot.
	rec := httptest.NewRecorder()
	Handler(l.prober.Monitor()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PathsAPIPath, nil))
	var got paths.Snapshot
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || len(got.Paths) != 2 || len(got.Selections) != 3 {
		t.Fatalf("GET /v1/paths: %d %s (%v)", rec.Code, rec.Body, err)
	}
	if got.Paths[0].State != paths.StateDown || len(got.Paths[1].Classes) != 3 {
		t.Errorf("snapshot after failover: %+v", got.Paths)
	}
	rec = httptest.NewRecorder()
	Handler(l.prober.Monitor()).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, PathsAPIPath, nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", rec.Code)
	}
}

func TestL7Socket(t *testing.T) {
	m := paths.NewMonitor(paths.Config{})
	if err := m.SetPaths([]paths.PathSpec{{ID: "p1", Dst: "b"}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "run", "metrics.sock")
	ln, err := ListenL7(sock)
	if err != nil {
		t.Fatal(err)
	}
	run(t, func(ctx context.Context) error { return ServeL7(ctx, ln, m, nil) })
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewScanner(c)
	for _, tc := range []struct {
		line, field string
		ok          bool
	}{
		{`{"path_id":"p1","request_latency_p99_ms":250,"error_rate":0.02,"requests_per_second":100,"connection_failures":1}`, "", true},
		{`{"path_id":"p1","error_rate":2}`, "error_rate", false},
		{`{"path_id":"zz"}`, "path_id", false},
		{`{"path_id":"p1","p99":3}`, "p99", false},
		{`garbage`, "", false},
	} {
		if _, err := c.Write([]byte(tc.line + "\n")); err != nil {
			t.Fatal(err)
		}
		if !r.Scan() {
			t.Fatalf("%s: no reply: %v", tc.line, r.Err())
		}
		var rep L7Reply
		if err := json.Unmarshal(r.Bytes(), &rep); err != nil {
			t.Fatal(err)
		}
		if rep.OK != tc.ok || rep.Field != tc.field || (!tc.ok && rep.Error == "") {
			t.Errorf("%s: reply %s", tc.line, r.Bytes())
		}
	}
	if s := m.Snapshot(time.Now()).Paths[0]; s.L7 == nil || s.L7.RequestLatencyP99Ms != 250 {
		t.Errorf("L7 not fed: %+v", s.L7)
	}
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/probe"
	"github.com/patronus/patronus/wanem"
)

func runPathsCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, env{stdout: &out, stderr: &errb, stdin: strings.NewReader(""), getenv: func(string) string { return "" }})
	return code, out.String(), errb.String()
}

// servePaths serves GET /v1/paths from a monitor on a temporary unix socket, as the agent would.
func servePaths(t *testing.T, m *paths.Monitor) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(probe.PathsAPIPath, probe.Handler(m))
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestPathsCommand(t *testing.T) {
	now := time.Now()
	m := paths.NewMonitor(paths.Config{})
	if err := m.SetPaths([]paths.PathSpec{{ID: "isp-a", Src: "10.1.1.1", Dst: "cluster-b", Remote: "10.2.1.2:7948"},
		{ID: "isp-b", Src: "10.1.2.1", Dst: "cluster-b", Remote: "10.2.2.2:7948"}}, now); err != nil {
		t.Fatal(err)
	}
	m.SetRequirements([]paths.Requirement{{Dst: "cluster-b", Class: paths.LatencySensitive, MaxLatency: time.Millisecond}})
	for i := range uint64(5) {
		at := now.Add(time.Duration(i) * 50 * time.Millisecond)
		m.Sent("isp-a", i, at)
		m.Reply("isp-a", i, at.Add(5*time.Millisecond))
	}
	m.Tick(now.Add(300 * time.Millisecond))
	sock := servePaths(t, m)

	code, out, errs := runPathsCLI(t, "paths", "--socket", sock)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{"PATH", "isp-a", "up", "5.0ms", "latency-sensitive (", "bulk (", "isp-b", "unknown",
		"latency-sensitive≤1ms", "NoPathMeetsMaxLatency"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runPathsCLI(t, "paths", "--socket", sock, "-o", "json")
	var snap paths.Snapshot
	if code != 0 || json.Unmarshal([]byte(out), &snap) != nil || len(snap.Paths) != 2 || snap.Paths[0].LatencyMs != 5 {
		t.Fatalf("json: exit %d %s", code, out)
	}
	if code, _, _ := runPathsCLI(t, "paths", "--socket", sock, "-o", "xml"); code != ExitUsage {
		t.Errorf("-o xml: exit %d", code)
	}
	if code, _, errs := runPathsCLI(t, "paths", "--socket", filepath.Join(t.TempDir(), "none.sock")); code != ExitError || !strings.Contains(errs, "not running") {
		t.Errorf("no agent: exit %d %s", code, errs)
	}
}

func TestWanemCommands(t *testing.T) {
	r, err := wanem.New(wanem.Options{Listen: "127.0.0.1:0", Target: "127.0.0.1:9"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	sock := filepath.Join(t.TempDir(), "wanem.sock")
	l, err := wanem.ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = wanem.ServeControl(ctx, l, r) }()

	code, out, errs := runPathsCLI(t, "wanem", "set", "--control", sock, "--delay", "20ms", "--jitter", "2ms", "--loss", "1", "--blackhole=true")
	if code != 0 || !strings.Contains(out, "delay 20ms, jitter 2ms, loss 1%, blackhole true") {
		t.Fatalf("set: exit %d %q %s", code, out, errs)
	}
	if got := r.Impairment(); got != (wanem.Impairment{Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond, LossPercent: 1, Blackhole: true}) {
		t.Fatalf("relay has %+v", got)
	}
	if code, _, _ := runPathsCLI(t, "wanem", "set", "--control", sock, "--blackhole=false"); code != 0 || r.Impairment().Blackhole || r.Impairment().Delay != 20*time.Millisecond {
		t.Fatalf("partial set: exit %d, relay %+v", code, r.Impairment())
	}
	if code, _, _ := runPathsCLI(t, "wanem", "set", "--control", sock, "--loss", "120"); code != ExitUsage {
		t.Errorf("loss 120: exit %d", code)
	}
	code, out, _ = runPathsCLI(t, "wanem", "show", "--control", sock, "-o", "json")
	if code != 0 || !strings.Contains(out, `"delay": "20ms"`) {
		t.Errorf("show: exit %d %s", code, out)
	}
	if code, _, _ := runPathsCLI(t, "wanem", "run", "--listen", "127.0.0.1:0"); code != ExitUsage {
		t.Errorf("run without --target: exit %d", code)
	}
}

func TestParsePathFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want paths.PathSpec
		dev  string
		err  string
	}{
		{"id=p1,remote=10.0.0.2:7948", paths.PathSpec{ID: "p1", Src: "default", Dst: "remote", Remote: "10.0.0.2:7948"}, "", ""},
		{"id=p1,remote=10.0.0.2:7948,dst=b,src=10.0.0.1,bandwidth=250", paths.PathSpec{ID: "p1", Src: "10.0.0.1", Dst: "b", Remote: "10.0.0.2:7948", BandwidthMbps: 250}, "", ""},
		{"id=p2,remote=[fd00::2]:7948,dev=eth1", paths.PathSpec{ID: "p2", Src: "eth1", Dst: "remote", Remote: "[fd00::2]:7948"}, "eth1", ""},
		{"remote=10.0.0.2:7948", paths.PathSpec{}, "", "required"},
		{"id=p1,remote=10.0.0.2", paths.PathSpec{}, "", "remote"},
		{"id=p1,remote=h:1,bandwidth=-3", paths.PathSpec{}, "", "bandwidth"},
		{"id=p1,remote=h:1,colour=red", paths.PathSpec{}, "", "unknown key"},
		{"id=p1,remote", paths.PathSpec{}, "", "key=value"},
	} {
		got, err := parsePathFlag(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got.PathSpec != tc.want || got.Device != tc.dev {
			t.Errorf("%s: %+v %v, want %+v", tc.in, got, err, tc.want)
		}
	}
	if code, _, _ := runPathsCLI(t, "paths", "run", "--respond", "off"); code != ExitUsage {
		t.Errorf("paths run with nothing to do: exit %d", code)
	}
}

package pathstest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/patronus/patronus/internal/testbin"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patronus/patronus/paths"
)

// patronusBin is $PATRONUS_BIN or a binary built from the module once per test run.
func patronusBin(t *testing.T) string { return testbin.Patronus(t) }

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// proc is a running patronus whose stdout lines arrive on lines.
type proc struct {
	lines chan string
	errb  bytes.Buffer
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, patronusBin(t), args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	p := &proc{lines: make(chan string, 1000)}
	cmd.Stderr = &p.errb
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if err := cmd.Wait(); err != nil && t.Failed() {
			t.Logf("patronus %s: %v\n%s", strings.Join(args, " "), err, p.errb.String())
		}
	})
	return p
}

// waitLine returns the first stdout line containing s.
func (p *proc) waitLine(t *testing.T, s string, timeout time.Duration) (string, time.Time) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l := <-p.lines:
			if strings.Contains(l, s) {
				return l, time.Now()
			}
		case <-deadline:
			t.Fatalf("no line with %q within %v; stderr:\n%s", s, timeout, p.errb.String())
		}
	}
}

func (p *proc) waitMatch(t *testing.T, what string, timeout time.Duration, match func(string) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l := <-p.lines:
			if match(l) {
				return
			}
		case <-deadline:
			t.Fatalf("no %s within %v; stderr:\n%s", what, timeout, p.errb.String())
		}
	}
}

func cli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(patronusBin(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("patronus %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// TestBinaryDemoFlow runs what the demo runs, as separate processes on loopback: two
// `patronus wanem run` relays in front of `patronus paths run`'s responder, the prober
// over both, `patronus paths` reading its API, `patronus wanem set` blackholing a path.
func TestBinaryDemoFlow(t *testing.T) {
	dir := t.TempDir()
	respond := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	var relays [2]string
	for i, delay := range []string{"2500us", "15ms"} {
		r := start(t, "wanem", "run", "--listen", "127.0.0.1:0", "--target", respond, "--delay", delay,
			"--control", filepath.Join(dir, fmt.Sprintf("wanem%d.sock", i+1)))
		line, _ := r.waitLine(t, "wanem: ", 10*time.Second)
		relays[i] = strings.Fields(line)[1]
	}
	api := filepath.Join(dir, "paths.sock")
	pr := start(t, "paths", "run", "--respond", respond, "--api-socket", api, "--hold-down", "1s",
		"--path", "id=p1,remote="+relays[0]+",dst=cluster-b,bandwidth=100",
		"--path", "id=p2,remote="+relays[1]+",dst=cluster-b,bandwidth=1000")
	// Under load the first selection may be made before p1's samples are in; then it
	// moves to p1 as better. Either way latency-sensitive must end up on p1.
	pr.waitMatch(t, "latency-sensitive selection of p1", 10*time.Second, func(l string) bool {
		return strings.Contains(l, "cluster-b latency-sensitive") && strings.Contains(l, "-> p1")
	})

	var snap paths.Snapshot
	deadline := time.Now().Add(10 * time.Second)
	for {
		snap = paths.Snapshot{}
		out, err := exec.Command(patronusBin(t), "paths", "--socket", api, "-o", "json").Output()
		if err == nil && json.Unmarshal(out, &snap) == nil && len(snap.Selections) == 3 &&
			snap.Selections[1].PathID == "p2" && snap.Paths[1].State == paths.StateUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("selections never settled: %s %v", out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("patronus paths:\n%s", cli(t, "paths", "--socket", api))

	cut := time.Now()
	cli(t, "wanem", "set", "--control", filepath.Join(dir, "wanem1.sock"), "--blackhole=true")
	line, at := pr.waitLine(t, "latency-sensitive p1 -> p2 (failover)", 5*time.Second)
	t.Logf("%q %v after `patronus wanem set --blackhole=true` was started", line, at.Sub(cut).Round(time.Millisecond))
	if out := cli(t, "paths", "--socket", api); !strings.Contains(out, "down") {
		t.Errorf("patronus paths does not show p1 down:\n%s", out)
	}
	if out := cli(t, "wanem", "show", "--control", filepath.Join(dir, "wanem1.sock")); !strings.Contains(out, "true") {
		t.Errorf("wanem show:\n%s", out)
	}
}

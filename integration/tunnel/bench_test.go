package tunneltest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTunnelBench measures the tunnel against the bare underlay and against the same pod
// path routed without the tunnel, in the same run: RTT
// (ping), TCP throughput with 1 and 4 streams (iperf3), and CPU per Gbit/s. It is a
// measurement, not a pass/fail test: it runs only with PATRONUS_BENCH_TUNNEL=1
// (scripts/bench/tunnel.sh) and prints a Markdown table.
func TestTunnelBench(t *testing.T) {
	if os.Getenv("PATRONUS_BENCH_TUNNEL") != "1" {
		t.Skip("a benchmark: run scripts/bench/tunnel.sh (sets PATRONUS_BENCH_TUNNEL=1)")
	}
	for _, tool := range []string{"iperf3", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (apt-get install iperf3 iputils-ping)", tool)
		}
	}
	secs := 5
	if s, err := strconv.Atoi(os.Getenv("PATRONUS_BENCH_SECONDS")); err == nil && s > 0 {
		secs = s
	}
	rounds := 3
	if s, err := strconv.Atoi(os.Getenv("PATRONUS_BENCH_ROUNDS")); err == nil && s > 0 {
		rounds = s
	}
	a, b := newPair(t)
	connect(t, a, b)
	waitTunnel(t, a, b)
	// The same topology once more, its gateways routing each other's pod CIDR over the
	// underlay in the clear: the pod-to-pod path minus WireGuard.
	ra, rb := newTopology(t)
	for _, x := range [][2]*side{{ra, rb}, {rb, ra}} {
		if out, err := exec.Command("ip", "-n", x[0].gwName, "route", "add", x[1].podCIDR.String(), "via", x[1].underlay.String()).CombinedOutput(); err != nil {
			t.Fatalf("route in %s: %v: %s", x[0].gwName, err, out)
		}
	}
	eventually(t, 10*time.Second, "routed pod A → pod B", func() error { return ping(ra.podName, rb.podIP, 0) })

	type path struct{ name, srcNS, dstNS, dst string }
	paths := []path{
		{"bare underlay (gateway A → gateway B, veth)", a.gwName, b.gwName, b.underlay.String()},
		{"pod A → pod B routed in the clear (bridges + underlay, no tunnel)", ra.podName, rb.podName, rb.podIP.String()},
		{"tunnel (pod A → pod B, bridge + userspace WireGuard)", a.podName, b.podName, b.podIP.String()},
	}
	// Rounds interleave the paths (the machine is shared); medians are reported.
	vals := make([][6][]float64, len(paths))
	for range rounds {
		for i, p := range paths {
			rtt := pingRTT(t, p.srcNS, p.dst)
			r1 := iperf(t, p.srcNS, p.dstNS, p.dst, 1, secs)
			r4 := iperf(t, p.srcNS, p.dstNS, p.dst, 4, secs)
			for k, v := range []float64{rtt, r1.gbps, r4.gbps, r1.coresPerGbps, r4.coresPerGbps, r1.wgCoresPerGbps} {
				vals[i][k] = append(vals[i][k], v)
			}
		}
	}
	fmt.Printf("%d rounds of %d s per iperf3 run, medians\n\n", rounds, secs)
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("load average at the end: %s\n", strings.Fields(string(load))[0])
	fmt.Println("| path | RTT avg (ms) | TCP 1 stream (Gbit/s) | TCP 4 streams (Gbit/s) | CPU cores per Gbit/s, 1 stream (iperf3 + WireGuard) | same, 4 streams | of which WireGuard, 1 stream |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for i, p := range paths {
		m := func(k int) float64 { return median(vals[i][k]) }
		fmt.Printf("| %s | %.3f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", p.name, m(0), m(1), m(2), m(3), m(4), m(5))
	}
	fmt.Printf("\nadded RTT of the tunnel path: %.3f ms vs the bare underlay, %.3f ms vs the same pod path without the tunnel (WireGuard alone)\n",
		median(vals[2][0])-median(vals[0][0]), median(vals[2][0])-median(vals[1][0]))
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

var rttRe = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/`)

func pingRTT(t *testing.T, ns, dst string) float64 {
	out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-q", "-n", "-c", "500", "-i", "0.002", dst).CombinedOutput()
	if err != nil {
		t.Fatalf("ping %s: %v\n%s", dst, err, out)
	}
	m := rttRe.FindSubmatch(out)
	if m == nil {
		t.Fatalf("ping output: %s", out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

type iperfResult struct{ gbps, coresPerGbps, wgCoresPerGbps float64 }

// iperf runs iperf3 from srcNS to a one-shot server in dstNS. CPU is counted per process
// (the machine is shared: /proc/stat would count other work): iperf3 client and server
// from their rusage, plus this process, where the userspace WireGuard devices live.
// Softirq work the kernel charges to whatever runs at the time is included only as far
// as it lands on these processes.
func iperf(t *testing.T, srcNS, dstNS, dst string, streams, secs int) iperfResult {
	srv := exec.Command("ip", "netns", "exec", dstNS, "iperf3", "-s", "-1", "-p", "5202")
	must(t, srv.Start())
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Wait() }()
	time.Sleep(300 * time.Millisecond)
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	cli := exec.Command("ip", "netns", "exec", srcNS, "iperf3", "-c", dst, "-p", "5202", "-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams), "-J")
	out, err := cli.Output()
	if err != nil {
		_ = srv.Process.Kill()
		t.Fatalf("iperf3 to %s: %v\n%s", dst, err, out)
	}
	wall := time.Since(start).Seconds()
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	select {
	case <-srvDone:
	case <-time.After(5 * time.Second):
		_ = srv.Process.Kill()
		<-srvDone
	}
	var j struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	must(t, json.Unmarshal(out, &j))
	gbps := j.End.SumReceived.BitsPerSecond / 1e9
	child := func(c *exec.Cmd) float64 {
		if c.ProcessState == nil {
			return 0
		}
		ru := c.ProcessState.SysUsage().(*syscall.Rusage)
		return tv(ru.Utime) + tv(ru.Stime)
	}
	self := tv(ru1.Utime) + tv(ru1.Stime) - tv(ru0.Utime) - tv(ru0.Stime)
	total := (child(cli) + child(srv) + self) / wall
	return iperfResult{gbps: gbps, coresPerGbps: total / gbps, wgCoresPerGbps: self / wall / gbps}
}

func tv(v syscall.Timeval) float64 { return float64(v.Sec) + float64(v.Usec)/1e6 }

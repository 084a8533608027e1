package qos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
)

// pair is a sender namespace with veth "up0" to a receiver namespace (10.73.0.1 → .2).
type pair struct {
	snd, rcv         ns.NetNS
	sndName, rcvName string
}

func newPair(t *testing.T) *pair {
	t.Helper()
	enforcetest.RequireRoot(t)
	for _, tool := range []string{"iperf3", "nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (apt-get install iperf3 nftables iproute2)", tool)
		}
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	p := &pair{sndName: "pt-qos-" + id + "-s", rcvName: "pt-qos-" + id + "-r"}
	p.snd, p.rcv = enforcetest.NewNS(t, p.sndName), enforcetest.NewNS(t, p.rcvName)
	must(t, p.snd.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "dn0", PeerNamespace: netlink.NsFd(int(p.rcv.Fd()))})
	}))
	for _, s := range []struct {
		n    ns.NetNS
		link string
		addr string
	}{{p.snd, "up0", "10.73.0.1/24"}, {p.rcv, "dn0", "10.73.0.2/24"}} {
		must(t, s.n.Do(func(ns.NetNS) error {
			for _, name := range []string{"lo", s.link} {
				l, err := netlink.LinkByName(name)
				if err != nil {
					return err
				}
				if name != "lo" {
					a, _ := netlink.ParseAddr(s.addr)
					if err := netlink.AddrAdd(l, a); err != nil {
						return err
					}
				}
				if err := netlink.LinkSetUp(l); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	// The pod's flow (to port 5202) gets mark 0x10, as the steering datapath would set it.
	nft := `table inet ptqostest {
	chain out {
		type filter hook output priority 0;
		tcp dport 5202 meta mark set 0x10
	}
}
`
	cmd := exec.Command("ip", "netns", "exec", p.sndName, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(nft)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	return p
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// measure runs a saturating bulk flow (8 streams to port 5201) and, after a second, the
// pod's single stream to 5202 for secs seconds; it returns the pod flow's received rate.
func (p *pair) measure(t *testing.T, secs int) (podMbps, bulkMbps float64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+30)*time.Second)
	defer cancel()
	for _, port := range []string{"5201", "5202"} {
		srv := exec.CommandContext(ctx, "ip", "netns", "exec", p.rcvName, "iperf3", "-s", "-1", "-p", port)
		must(t, srv.Start())
		t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	}
	time.Sleep(300 * time.Millisecond)
	type result struct {
		mbps float64
		err  error
	}
	run := func(port string, secs int, extra ...string) <-chan result {
		ch := make(chan result, 1)
		go func() {
			args := append([]string{"netns", "exec", p.sndName, "iperf3", "-c", "10.73.0.2", "-p", port, "-t", fmt.Sprint(secs), "-J"}, extra...)
			out, err := exec.CommandContext(ctx, "ip", args...).Output()
			if err != nil {
				ch <- result{err: fmt.Errorf("iperf3 to %s: %v: %s", port, err, out)}
				return
			}
			var r struct {
				End struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal(out, &r); err != nil {
				ch <- result{err: err}
				return
			}
			ch <- result{mbps: r.End.SumReceived.BitsPerSecond / 1e6}
		}()
		return ch
	}
	bulk := run("5201", secs+2, "-P", "8")
	time.Sleep(time.Second)
	pod := <-run("5202", secs)
	b := <-bulk
	must(t, pod.err)
	must(t, b.err)
	return pod.mbps, b.mbps
}

func TestGuaranteeUnderSaturation(t *testing.T) {
	p := newPair(t)
	const capacity, minimum = 100, 30
	k := Netlink{}
	// Baseline from the same run: the same capacity, no guarantee. 9 TCP streams share
	// 100 Mbit/s, so the pod's one stream gets about a ninth.
	must(t, p.snd.Do(func(ns.NetNS) error {
		_, err := Apply(k, "up0", Spec{RateMbps: capacity}, nil)
		return err
	}))
	basePod, baseBulk := p.measure(t, 4)
	t.Logf("no guarantee: pod %.1f Mbit/s, bulk %.1f Mbit/s", basePod, baseBulk)

	spec := Spec{RateMbps: capacity, Guarantees: []Guarantee{{Mark: 0x10, MinMbps: minimum, Pod: "ns/pod"}}}
	must(t, p.snd.Do(func(ns.NetNS) error {
		changed, err := Apply(k, "up0", spec, nil)
		if err == nil && !changed {
			err = fmt.Errorf("new guarantee not programmed")
		}
		if err != nil {
			return err
		}
		// A second Apply finds the kernel already matching.
		if changed, err = Apply(k, "up0", spec, nil); err != nil || changed {
			cs, _ := k.Installed("up0")
			return fmt.Errorf("second apply: changed %v, %v (installed %+v)", changed, err, cs)
		}
		return nil
	}))
	pod, bulk := p.measure(t, 4)
	t.Logf("guarantee %d Mbit/s: pod %.1f Mbit/s, bulk %.1f Mbit/s (capacity %d)", minimum, pod, bulk, capacity)
	if pod < minimum*0.9 {
		t.Errorf("pod got %.1f Mbit/s, less than 90%% of its %d Mbit/s minimum", pod, minimum)
	}
	if bulk+pod > capacity*1.1 {
		t.Errorf("total %.1f Mbit/s above the %d Mbit/s capacity: HTB not shaping", bulk+pod, capacity)
	}
	must(t, p.snd.Do(func(ns.NetNS) error {
		if err := k.Remove("up0"); err != nil {
			return err
		}
		cs, err := k.Installed("up0")
		if err == nil && cs != nil {
			err = fmt.Errorf("classes left after Remove: %+v", cs)
		}
		return err
	}))
}

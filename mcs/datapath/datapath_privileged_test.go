package datapath

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
)

// testNS makes a network namespace with an interface holding the endpoint addresses
// (each with a TCP listener answering its own address) and a route for the VIP range.
func testNS(t testing.TB, addrs ...string) (path string, netns ns.NetNS) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nftables)")
	}
	name := fmt.Sprintf("pt-mcs-%06x", rand.IntN(1<<24))
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run("-n", name, "link", "set", "lo", "up")
	// No dummy links on this kernel: a veth pair inside the namespace carries the
	// endpoint addresses and the route to the VIP range.
	run("-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	run("-n", name, "link", "set", "d0", "up")
	run("-n", name, "link", "set", "d1", "up")
	run("-n", name, "route", "add", "10.112.0.0/16", "dev", "d0")
	for _, a := range addrs {
		run("-n", name, "addr", "add", a+"/32", "dev", "d0")
	}
	path = "/var/run/netns/" + name
	netns, err := ns.GetNS(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Close() })
	for _, a := range addrs {
		var l net.Listener
		err := netns.Do(func(ns.NetNS) error {
			var err error
			l, err = net.Listen("tcp", net.JoinHostPort(a, "8080"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, a)
				c.Close()
			}
		}()
	}
	return path, netns
}

// hits connects n times to vip:80 from inside netns and counts answers by endpoint.
func hits(t *testing.T, netns ns.NetNS, vip string, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for range n {
		err := netns.Do(func(ns.NetNS) error {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(vip, "80"), time.Second)
			if err != nil {
				out["error"]++
				return nil
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Second))
			b, _ := io.ReadAll(c)
			out[string(b)]++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func ep(a string, ready, local bool) Endpoint {
	return Endpoint{Addr: netip.MustParseAddr(a), Port: 8080, Ready: ready, Local: local}
}

func TestProgrammerNetns(t *testing.T) {
	path, netns := testNS(t, "10.245.1.5", "10.245.1.6", "10.245.1.7", "10.244.1.9")
	p, err := New(Options{NetNS: path})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// Another writer's chain in the shared table must survive our updates.
	c, err := nftables.New(nftables.WithNetNSFd(int(netnsFd(t, path))))
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: Table})
	c.AddChain(&nftables.Chain{Name: "tunnel-mss", Table: tbl})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	remote := []Endpoint{ep("10.245.1.5", true, false), ep("10.245.1.6", true, false), ep("10.245.1.7", false, false)}
	tests := []struct {
		name    string
		svc     Service
		check   func(map[string]int) error
		connect int
	}{
		{name: "balanced over ready endpoints", connect: 60,
			svc: Service{Name: "ns/web", VIP: netip.MustParseAddr("10.112.0.10"), Ports: []Port{{Protocol: "TCP", Port: 80, Endpoints: remote}}},
			check: func(h map[string]int) error {
				if h["10.245.1.5"] == 0 || h["10.245.1.6"] == 0 || h["10.245.1.7"] != 0 || h["error"] != 0 || h["10.245.1.5"]+h["10.245.1.6"] != 60 {
					return fmt.Errorf("want both ready endpoints and only them, got %v", h)
				}
				return nil
			}},
		{name: "local endpoints preferred", connect: 20,
			svc: Service{Name: "ns/web", VIP: netip.MustParseAddr("10.112.0.10"), Ports: []Port{{Protocol: "TCP", Port: 80,
				Endpoints: append([]Endpoint{ep("10.244.1.9", true, true)}, remote...)}}},
			check: func(h map[string]int) error {
				if h["10.244.1.9"] != 20 {
					return fmt.Errorf("want all on the local endpoint, got %v", h)
				}
				return nil
			}},
		{name: "not-ready local endpoint falls back to remote", connect: 30,
			svc: Service{Name: "ns/web", VIP: netip.MustParseAddr("10.112.0.10"), Ports: []Port{{Protocol: "TCP", Port: 80,
				Endpoints: append([]Endpoint{ep("10.244.1.9", false, true)}, remote...)}}},
			check: func(h map[string]int) error {
				if h["10.244.1.9"] != 0 || h["10.245.1.5"] == 0 || h["10.245.1.6"] == 0 {
					return fmt.Errorf("want remote endpoints only, got %v", h)
				}
				return nil
			}},
		{name: "ClientIP affinity pins the client", connect: 30,
			svc: Service{Name: "ns/web", VIP: netip.MustParseAddr("10.112.0.10"), AffinityTimeout: 30 * time.Second,
				Ports: []Port{{Protocol: "TCP", Port: 80, Endpoints: remote}}},
			check: func(h map[string]int) error {
				if len(h) != 1 || h["error"] != 0 {
					return fmt.Errorf("want one endpoint for one client, got %v", h)
				}
				return nil
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := p.Set([]Service{tc.svc}); err != nil {
				t.Fatal(err)
			}
			if err := tc.check(hits(t, netns, tc.svc.VIP.String(), tc.connect)); err != nil {
				t.Error(err)
			}
		})
	}

	// Two services; changing one leaves the other working.
	web := Service{Name: "ns/web", VIP: netip.MustParseAddr("10.112.0.10"), Ports: []Port{{Protocol: "TCP", Port: 80, Endpoints: []Endpoint{ep("10.245.1.5", true, false)}}}}
	api := Service{Name: "ns/api", VIP: netip.MustParseAddr("10.112.0.11"), Ports: []Port{{Protocol: "TCP", Port: 80, Endpoints: []Endpoint{ep("10.245.1.6", true, false)}}}}
	if err := p.Set([]Service{web, api}); err != nil {
		t.Fatal(err)
	}
	api.Ports = []Port{{Protocol: "TCP", Port: 80, Endpoints: []Endpoint{ep("10.245.1.7", true, false)}}}
	if err := p.Set([]Service{web, api}); err != nil {
		t.Fatal(err)
	}
	if h := hits(t, netns, "10.112.0.10", 5); h["10.245.1.5"] != 5 {
		t.Errorf("web after api changed: %v", h)
	}
	if h := hits(t, netns, "10.112.0.11", 5); h["10.245.1.7"] != 5 {
		t.Errorf("api after its change: %v", h)
	}
	if err := p.Set([]Service{api}); err != nil {
		t.Fatal(err)
	}
	if h := hits(t, netns, "10.112.0.10", 1); h["error"] != 1 {
		t.Errorf("web still answers after removal: %v", h)
	}
	if h := hits(t, netns, "10.112.0.11", 3); h["10.245.1.7"] != 3 {
		t.Errorf("api after web's removal: %v", h)
	}

	// A new Programmer (agent restart) rebuilds from scratch over the leftovers.
	p2, err := New(Options{NetNS: path})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if err := p2.Set([]Service{web}); err != nil {
		t.Fatal(err)
	}
	if h := hits(t, netns, "10.112.0.11", 1); h["error"] != 1 {
		t.Errorf("api left over after a restart's first Set: %v", h)
	}
	p = p2

	// Withdrawn: nothing of ours is left, the other writer's chain is.
	if err := p.Set(nil); err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ch := range chains {
		names = append(names, ch.Name)
	}
	all := strings.Join(names, ",")
	if !strings.Contains(all, "tunnel-mss") || strings.Count(all, Prefix+"s-") != 0 || strings.Count(all, Prefix+"e-") != 0 {
		t.Errorf("chains after Set(nil): %s", all)
	}
	if h := hits(t, netns, "10.112.0.10", 1); h["error"] != 1 {
		t.Errorf("VIP still answers after withdrawal: %v", h)
	}
}

func netnsFd(t *testing.T, path string) uintptr {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f.Fd()
}

func TestPick(t *testing.T) {
	tests := []struct {
		name string
		in   []Endpoint
		want int
	}{
		{"none", nil, 0},
		{"only not ready", []Endpoint{ep("10.0.0.1", false, true)}, 0},
		{"local wins", []Endpoint{ep("10.0.0.1", true, true), ep("10.0.0.2", true, false)}, 1},
		{"remote when local not ready", []Endpoint{ep("10.0.0.1", false, true), ep("10.0.0.2", true, false), ep("10.0.0.3", true, false)}, 2},
	}
	for _, tc := range tests {
		if got := Pick(tc.in); len(got) != tc.want {
			t.Errorf("%s: %v", tc.name, got)
		}
	}
}

// prioPackets is the packet count of the test's own counter of packets with
// skb->priority 6 (0:6), at postrouting after this package's chain.
func prioPackets(t *testing.T, nsName string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", nsName, "nft", "list", "chain", "inet", "pttest", "post").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list chain: %v: %s", err, out)
	}
	_, rest, ok := strings.Cut(string(out), "counter packets ")
	if !ok {
		t.Fatalf("no counter in:\n%s", out)
	}
	var n int
	if _, err := fmt.Sscanf(rest, "%d", &n); err != nil {
		t.Fatalf("parse counter %q: %v", rest, err)
	}
	return n
}

// A service's Priority reaches skb->priority of the packets towards it (latency-sensitive
// is 6, TC_PRIO_INTERACTIVE), as seen by a later postrouting chain; an unmarked local TCP
// packet has priority 0.
func TestPriorityNetns(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft not installed: %v", err)
	}
	path, netns := testNS(t, "10.245.1.5")
	nsName := strings.TrimPrefix(path, "/var/run/netns/")
	for _, cmd := range [][]string{
		{"add", "table", "inet", "pttest"},
		{"add", "chain", "inet", "pttest", "post", "{ type filter hook postrouting priority 200 ; }"},
		{"add", "rule", "inet", "pttest", "post", "meta", "priority", "0:6", "counter"},
	} {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", nsName, "nft"}, cmd...)...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v: %s", cmd, err, out)
		}
	}
	p, err := New(Options{NetNS: path})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	svc := func(prio uint32) []Service {
		return []Service{{Name: "shop/web", VIP: netip.MustParseAddr("10.112.0.10"), Priority: prio,
			Ports: []Port{{Protocol: "TCP", Port: 80, Endpoints: []Endpoint{ep("10.245.1.5", true, true)}}}}}
	}
	for _, tc := range []struct {
		name   string
		prio   uint32
		marked bool
	}{
		{"no class", 0, false},
		{"latency-sensitive", 6, true},
		{"class removed", 0, false},
	} {
		if err := p.Set(svc(tc.prio)); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		before := prioPackets(t, nsName)
		if h := hits(t, netns, "10.112.0.10", 5); h["10.245.1.5"] != 5 {
			t.Fatalf("%s: answers %v", tc.name, h)
		}
		got := prioPackets(t, nsName) - before
		// The nft tool reads back everything written (it crashed on an earlier form).
		if out, err := exec.Command("ip", "netns", "exec", nsName, "nft", "list", "table", "inet", Table).CombinedOutput(); err != nil ||
			tc.marked && !strings.Contains(string(out), "| 0x06000000") {
			t.Errorf("%s: nft list table: %v:\n%s", tc.name, err, out)
		}
		if tc.marked && got < 5 {
			t.Errorf("%s: %d packets with priority 0:6 for 5 connections, want at least their 5 SYNs", tc.name, got)
		}
		if !tc.marked && got != 0 {
			t.Errorf("%s: %d packets with priority 0:6, want none", tc.name, got)
		}
	}
}

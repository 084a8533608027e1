package policy_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/policy"
)

// TestEBPFServicePaths covers the two Service paths the upstream Netpol suite found open
// or closed wrongly with the eBPF datapath, on two node namespaces routed to each other
// over a veth "underlay" and an nftables stand-in for kube-proxy in node 1:
//
//   - hairpin: a pod reaching itself through its own Service (DNATed back to it and
//     masqueraded to the node's bridge address, as kube-proxy does) is allowed even when
//     the pod is isolated both ways (upstream's AllowLoopback);
//   - a pod's egress policy holds for a Service whose endpoint is a pod on the other node,
//     with no uplink named: the enforcer finds the device of the route to node 2's pods.
func TestEBPFServicePaths(t *testing.T) {
	tp := enforcetest.NewTopology(t, 2) // node 1: a 10.250.0.11, b 10.250.0.12 on br0
	a, b := tp.Pods[0], tp.Pods[1]
	tp.ServeAll(t)
	a.ServeTCP(t, 80)
	b.ServeTCP(t, 80)
	remote := twoNodes(t, tp)
	remote.ServeTCP(t, 80)
	serviceStandIn(t, tp, remote.IP)

	pin := filepath.Join(enforcetest.BPFFS(t), "patronus")
	e, err := enforce.NewEBPF(enforce.Options{PinDir: pin, NetNS: tp.Node.Path(), RouteUplinks: true,
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	svcA, svcB, svcR := netip.MustParseAddrPort("10.96.0.10:80"), netip.MustParseAddrPort("10.96.0.11:80"), netip.MustParseAddrPort("10.96.0.20:80")

	eps := make([]enforce.Endpoint, 2)
	for i, p := range []*enforcetest.Pod{a, b} {
		eps[i] = enforce.Endpoint{HostVeth: p.HostVeth,
			EndpointPolicy: policy.EndpointPolicy{Namespace: "ns", Pod: p.Name, IPs: []netip.Addr{p.IP}}}
	}
	if err := e.Set(context.Background(), eps); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		from *enforcetest.Pod
		to   netip.AddrPort
	}{{a, svcA}, {b, svcB}, {a, svcR}, {b, svcR}, {remote, a.AddrPort(80)}} {
		if !c.from.TCP(c.to) {
			t.Fatalf("without policy: %s -> %s fails (topology broken)", c.from.Name, c.to)
		}
	}

	// a: isolated both ways, may send only to the remote pod on TCP 80.
	// b: egress isolated with no rule.
	eps[0].IngressIsolated, eps[0].EgressIsolated = true, true
	eps[0].IngressPolicies, eps[0].EgressPolicies = []string{"ns/a"}, []string{"ns/a"}
	eps[0].Egress = []policy.Rule{{Policy: "ns/a", Peers: []policy.Peer{{Prefix: netip.PrefixFrom(remote.IP, 32)}},
		Ports: []policy.PortRange{{Protocol: policy.TCP, First: 80, Last: 80}}}}
	eps[1].EgressIsolated = true
	eps[1].EgressPolicies = []string{"ns/b"}
	if err := e.Set(context.Background(), eps); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		from *enforcetest.Pod
		to   netip.AddrPort
		want bool
	}{
		{"a -> its own Service (hairpin, a isolated both ways)", a, svcA, true},
		{"b -> its own Service (hairpin, b egress-isolated)", b, svcB, true},
		{"a -> Service of the remote pod (a's egress allows it)", a, svcR, true},
		{"b -> Service of the remote pod (b's egress allows nothing)", b, svcR, false},
		{"b -> remote pod directly", b, remote.AddrPort(80), false},
		{"b -> a directly (a ingress-isolated)", b, a.AddrPort(80), false},
		{"remote -> a directly (a ingress-isolated)", remote, a.AddrPort(80), false},
		{"remote -> b directly (b egress-isolated only: replies pass the uplink)", remote, b.AddrPort(80), true},
	} {
		var dump *exec.Cmd
		if os.Getenv("PBF_DEBUG") != "" {
			dump = exec.Command("ip", "netns", "exec", filepath.Base(tp.Node.Path()), "timeout", "2", "tcpdump", "-nei", "any", "tcp")
			dump.Stdout, dump.Stderr = os.Stderr, os.Stderr
			_ = dump.Start()
			time.Sleep(500 * time.Millisecond)
		}
		got := c.from.TCP(c.to)
		if dump != nil {
			_ = dump.Wait()
			out, _ := exec.Command("bpftool", "map", "dump", "pinned", pin+"/pt_conntrack").CombinedOutput()
			out2, _ := exec.Command("bpftool", "map", "dump", "pinned", pin+"/pt_denies").CombinedOutput()
			t.Logf("%s: %v\n%s\n%s", c.name, got, out, out2)
		}
		if got != c.want {
			t.Errorf("%s: allowed=%v, want %v", c.name, got, c.want)
		}
	}
}

// twoNodes makes node 2 (a namespace with one pod 10.251.0.11 behind 10.251.0.1) and
// routes node 1 (tp) and node 2 to each other's pod block over a veth pair
// 10.77.0.1/30 - 10.77.0.2/30.
func twoNodes(t *testing.T, tp *enforcetest.Topology) *enforcetest.Pod {
	t.Helper()
	n2 := enforcetest.NewNS(t, "pt-svp-"+tp.ID+"-n2")
	pod := &enforcetest.Pod{Name: "r", NS: enforcetest.NewNS(t, "pt-svp-"+tp.ID+"-r"), IP: netip.MustParseAddr("10.251.0.11")}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	addr := func(l netlink.Link, cidr string) error {
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	}
	route := func(dst, gw string) error {
		_, d, _ := net.ParseCIDR(dst)
		return netlink.RouteAdd(&netlink.Route{Dst: d, Gw: net.ParseIP(gw)})
	}
	// Underlay: ul1 in node 1, ul2 in node 2.
	must(tp.Node.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul1"}, PeerName: "ul2"}); err != nil {
			return err
		}
		peer, err := netlink.LinkByName("ul2")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, int(n2.Fd())); err != nil {
			return err
		}
		l, err := netlink.LinkByName("ul1")
		if err != nil {
			return err
		}
		if err := addr(l, "10.77.0.1/30"); err != nil {
			return err
		}
		return route("10.251.0.0/24", "10.77.0.2")
	}))
	must(n2.Do(func(ns.NetNS) error {
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		l, err := netlink.LinkByName("ul2")
		if err != nil {
			return err
		}
		if err := addr(l, "10.77.0.2/30"); err != nil {
			return err
		}
		if err := route("10.250.0.0/24", "10.77.0.1"); err != nil {
			return err
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pr0"}, PeerName: "pr1"}); err != nil {
			return err
		}
		peer, err := netlink.LinkByName("pr1")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, int(pod.NS.Fd())); err != nil {
			return err
		}
		h, err := netlink.LinkByName("pr0")
		if err != nil {
			return err
		}
		return addr(h, "10.251.0.1/24")
	}))
	must(pod.NS.Do(func(ns.NetNS) error {
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		l, err := netlink.LinkByName("pr1")
		if err != nil {
			return err
		}
		if err := addr(l, pod.IP.String()+"/24"); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP("10.251.0.1"), LinkIndex: l.Attrs().Index})
	}))
	return pod
}

// serviceStandIn translates Services in node 1 as kube-proxy (nftables mode) does:
// 10.96.0.10:80 → a:80, 10.96.0.11:80 → b:80 (each pod's own Service), 10.96.0.20:80 →
// remote:80, with hairpin traffic (source = endpoint) masqueraded. The pods' bridge
// ports get hairpin mode, as the CNI sets it, so a packet can go back where it came from.
func serviceStandIn(t *testing.T, tp *enforcetest.Topology, remote netip.Addr) {
	t.Helper()
	tp.NodeSysctl(t, "net/ipv4/ip_forward", "1")
	tp.NodeSysctl(t, "net/bridge/bridge-nf-call-iptables", "1")
	a, b := tp.Pods[0].IP.String(), tp.Pods[1].IP.String()
	rules := `table ip kp {
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.96.0.10 tcp dport 80 dnat to ` + a + `:80
    ip daddr 10.96.0.11 tcp dport 80 dnat to ` + b + `:80
    ip daddr 10.96.0.20 tcp dport 80 dnat to ` + remote.String() + `:80
  }
  chain post { type nat hook postrouting priority srcnat; policy accept;
    ip saddr ` + a + ` ip daddr ` + a + ` masquerade fully-random
    ip saddr ` + b + ` ip daddr ` + b + ` masquerade fully-random
  }
}`
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(tp.Node.Path()), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft Service rules: %v: %s", err, out)
	}
	err := tp.Node.Do(func(ns.NetNS) error {
		for _, p := range tp.Pods {
			l, err := netlink.LinkByName(p.HostVeth)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetHairpin(l, true); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

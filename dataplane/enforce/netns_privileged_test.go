package enforce

import (
	"context"
	"fmt"

	"errors"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/policy"
)

func host32(a netip.Addr) policy.Peer { return policy.Peer{Prefix: netip.PrefixFrom(a, a.BitLen())} }

func endpoints(tp *enforcetest.Topology) []Endpoint {
	var out []Endpoint
	for _, p := range tp.Pods {
		out = append(out, Endpoint{
			EndpointPolicy: policy.EndpointPolicy{Namespace: "ns", Pod: p.Name, IPs: []netip.Addr{p.IP}},
			HostVeth:       p.HostVeth,
		})
	}
	return out
}

// policyAB: b admits a on TCP 8080 and UDP 5353 and SCTP 3868; a may send only to b on
// those ports. c has no policy.
func policyAB(tp *enforcetest.Topology) []Endpoint {
	eps := endpoints(tp)
	a, b := tp.Pods[0], tp.Pods[1]
	ports := []policy.PortRange{{Protocol: policy.TCP, First: 8080, Last: 8080}, {Protocol: policy.UDP, First: 5353, Last: 5353}, {Protocol: policy.SCTP, First: 3868, Last: 3868}}
	eps[1].IngressIsolated = true
	eps[1].IngressPolicies = []string{"ns/b-in"}
	eps[1].Ingress = []policy.Rule{{Policy: "ns/b-in", Peers: []policy.Peer{host32(a.IP)}, Ports: ports}}
	eps[0].EgressIsolated = true
	eps[0].EgressPolicies = []string{"ns/a-out"}
	eps[0].Egress = []policy.Rule{{Policy: "ns/a-out", Peers: []policy.Peer{host32(b.IP)}, Ports: ports}}
	return eps
}

type probe = enforcetest.Probe

func pr(from, to int, proto string, port uint16, want bool) probe {
	return probe{From: from, To: to, Proto: proto, Port: port, Want: want}
}

func checkProbes(t *testing.T, tp *enforcetest.Topology, stage string, probes []probe) {
	t.Helper()
	tp.Check(t, stage, probes)
}

func serveAll(t *testing.T, tp *enforcetest.Topology) { tp.ServeAll(t) }

func TestEBPFNetns(t *testing.T) {
	tp := enforcetest.NewTopology(t, 3)
	serveAll(t, tp)
	pin := filepath.Join(enforcetest.BPFFS(t), "patronus")
	e, err := NewEBPF(Options{PinDir: pin, NetNS: tp.Node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	if err := e.Set(ctx, endpoints(tp)); err != nil {
		t.Fatal(err)
	}
	checkProbes(t, tp, "no policy", []probe{
		pr(0, 1, "tcp", 8080, true), pr(2, 1, "tcp", 8080, true), pr(2, 1, "udp", 5353, true), pr(0, 2, "tcp", 8080, true),
		pr(2, 1, "sctp", 3868, true),
	})

	rd, err := e.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	if err := e.Set(ctx, policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // the second Set changes nothing and must keep enforcing
		checkProbes(t, tp, "policy", []probe{
			pr(0, 1, "tcp", 8080, true),  // allowed both ways
			pr(2, 1, "tcp", 8080, false), // b's ingress
			pr(0, 1, "tcp", 9090, false), // port not allowed
			pr(0, 2, "tcp", 8080, false), // a's egress
			pr(2, 0, "tcp", 8080, true),  // a is not ingress-isolated; the reply passes a's egress by conntrack
			pr(0, 1, "udp", 5353, true),
			pr(2, 1, "udp", 5353, false),
			pr(0, 1, "sctp", 3868, true),
			pr(2, 1, "sctp", 3868, false),
			pr(0, 1, "sctp", 3869, false),
		})
		if err := e.Set(ctx, policyAB(tp)); err != nil {
			t.Fatal(err)
		}
	}

	// Counters and events.
	counts, err := e.Denies()
	if err != nil {
		t.Fatal(err)
	}
	var bIn uint64
	for _, c := range counts {
		if c.Endpoint.Pod == "b" && c.Direction == Ingress {
			bIn = c.Packets
		}
	}
	if bIn == 0 {
		t.Errorf("deny counter of b ingress is 0: %+v", counts)
	}
	rd.SetDeadline(time.Now().Add(2 * time.Second))
	found := false
	for !found {
		ev, err := rd.Read()
		if err != nil {
			t.Fatalf("no deny event c -> b: %v", err)
		}
		if ev.Verdict == Denied && ev.Endpoint == "ns/b" && ev.Src.Addr() == tp.Pods[2].IP && ev.Dst.Port() == 8080 &&
			ev.Protocol == policy.TCP && ev.Direction == Ingress && len(ev.Policies) == 1 && ev.Policies[0] == "ns/b-in" {
			found = true
			if time.Since(ev.Time) > time.Minute || time.Since(ev.Time) < 0 {
				t.Errorf("event time %v is not now", ev.Time)
			}
		}
	}

	// Audit mode for b: allowed new flows are reported too.
	audited := policyAB(tp)
	audited[1].AuditAllowed = true
	if err := e.Set(ctx, audited); err != nil {
		t.Fatal(err)
	}
	checkProbes(t, tp, "audit all", []probe{pr(0, 1, "tcp", 9090, false), pr(0, 1, "udp", 5353, true)})
	rd.SetDeadline(time.Now().Add(2 * time.Second))
	for found = false; !found; {
		ev, err := rd.Read()
		if err != nil {
			t.Fatalf("no allow event a -> b udp/5353: %v", err)
		}
		found = ev.Verdict == Allowed && ev.Endpoint == "ns/b" && ev.Src.Addr() == tp.Pods[0].IP && ev.Dst.Port() == 5353 && ev.Protocol == policy.UDP
	}

	// Policy change: c gets in on 8080; then the rule goes again.
	eps := policyAB(tp)
	eps[1].Ingress = append(eps[1].Ingress, policy.Rule{Policy: "ns/b-in2", Peers: []policy.Peer{host32(tp.Pods[2].IP)},
		Ports: []policy.PortRange{{Protocol: policy.TCP, First: 8000, Last: 8090}}})
	if err := e.Set(ctx, eps); err != nil {
		t.Fatal(err)
	}
	checkProbes(t, tp, "c admitted", []probe{pr(2, 1, "tcp", 8080, true), pr(2, 1, "tcp", 9090, false), pr(0, 1, "tcp", 8080, true)})
	if err := e.Set(ctx, policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	checkProbes(t, tp, "c removed again", []probe{pr(2, 1, "tcp", 8080, false), pr(0, 1, "tcp", 8080, true)})

	// Only the live rule set remains in the maps.
	if n := countSets(t, e); n != 2 {
		t.Errorf("rule sets in the maps after changes: %d, want 2 (a egress, b ingress)", n)
	}

	// An endpoint whose veth does not exist yet is reported, the others still applied.
	withGhost := append(policyAB(tp), Endpoint{EndpointPolicy: policy.EndpointPolicy{Namespace: "ns", Pod: "ghost"}, HostVeth: "ptnosuchveth"})
	if err := e.Set(ctx, withGhost); !errors.Is(err, ErrNoInterface) {
		t.Errorf("Set with a missing veth: %v, want ErrNoInterface", err)
	}
	checkProbes(t, tp, "with a missing endpoint", []probe{pr(2, 1, "tcp", 8080, false), pr(0, 1, "tcp", 8080, true)})

	// Remove b: unrestricted again.
	if err := e.Remove(ctx, Endpoint{EndpointPolicy: policy.EndpointPolicy{Namespace: "ns", Pod: "b", IPs: []netip.Addr{tp.Pods[1].IP}}, HostVeth: tp.Pods[1].HostVeth}); err != nil {
		t.Fatal(err)
	}
	checkProbes(t, tp, "b removed", []probe{pr(2, 1, "tcp", 8080, true)})
}

func countSets(t *testing.T, e *EBPF) int {
	t.Helper()
	sets := map[uint32]bool{}
	var k struct {
		Prefixlen, SetID uint32
		Rest             [20]byte
	}
	var v [4]uint64
	it := e.objs.PtCidrs.Iterate()
	for it.Next(&k, &v) {
		sets[k.SetID] = true
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return len(sets)
}

// TestEBPFRestart: the agent stops (Close) and a new one starts from the same pin dir
// while a TCP flow runs: the flow keeps going, denied traffic stays denied throughout.
func TestEBPFRestart(t *testing.T) {
	tp := enforcetest.NewTopology(t, 3)
	serveAll(t, tp)
	pin := filepath.Join(enforcetest.BPFFS(t), "patronus")
	ctx := context.Background()
	e, err := NewEBPF(Options{PinDir: pin, NetNS: tp.Node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Set(ctx, policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	conn, err := tp.Pods[0].DialTCP(tp.Pods[1].AddrPort(8080), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var echoed atomic.Int64
	flowErr := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		buf := make([]byte, 512)
		for {
			select {
			case <-stop:
				flowErr <- nil
				return
			default:
			}
			_ = conn.SetDeadline(time.Now().Add(time.Second))
			if _, err := conn.Write(buf); err != nil {
				flowErr <- err
				return
			}
			if _, err := io.ReadFull(conn, buf); err != nil {
				flowErr <- err
				return
			}
			echoed.Add(int64(len(buf)))
			time.Sleep(5 * time.Millisecond)
		}
	}()
	denied := []probe{pr(2, 1, "tcp", 8080, false), pr(0, 2, "tcp", 8080, false)}
	checkProbes(t, tp, "before restart", denied)

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	before := echoed.Load()
	checkProbes(t, tp, "agent down", denied)
	time.Sleep(100 * time.Millisecond)
	if echoed.Load() == before {
		t.Error("flow stalled while the agent was down")
	}

	e2, err := NewEBPF(Options{PinDir: pin, NetNS: tp.Node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	checkProbes(t, tp, "new agent before Set", denied)
	// The pinned links now run the new process's programs (replaced in place).
	for _, name := range []string{"from_pod", "to_pod"} {
		l, err := link.LoadPinnedLink(filepath.Join(pin, "links", fmt.Sprintf("%d-%s", vethIndex(t, tp, 1), name)), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		prog := e2.objs.FromPod
		if name == "to_pod" {
			prog = e2.objs.ToPod
		}
		pinfo, _ := prog.Info()
		id, _ := pinfo.ID()
		if info.Program != id {
			t.Errorf("link %s runs program %d, want the new agent's %d", name, info.Program, id)
		}
	}
	if err := e2.Set(ctx, policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	checkProbes(t, tp, "new agent after Set", append(denied, pr(0, 1, "tcp", 8080, true)))
	mid := echoed.Load()
	time.Sleep(100 * time.Millisecond)
	if echoed.Load() == mid {
		t.Error("flow stalled after the restart")
	}
	close(stop)
	if err := <-flowErr; err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("flow broke: %v", err)
	}
	if n := countSets(t, e2); n != 2 {
		t.Errorf("rule sets after restart and identical Set: %d, want 2 (nothing rewritten)", n)
	}
}

// kubeProxyDNAT stands in for kube-proxy (nftables mode) in the node namespace:
// Service 10.96.0.10:80 → b:8080, 10.96.0.11:80 → c:8080. Bridge netfilter makes the
// bridged replies go through conntrack, as kube-proxy requires on a bridge.
func kubeProxyDNAT(t *testing.T, tp *enforcetest.Topology) {
	t.Helper()
	tp.NodeSysctl(t, "net/ipv4/ip_forward", "1")
	tp.NodeSysctl(t, "net/bridge/bridge-nf-call-iptables", "1")
	rules := `table ip kp {
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.96.0.10 tcp dport 80 dnat to ` + tp.Pods[1].IP.String() + `:8080
    ip daddr 10.96.0.11 tcp dport 80 dnat to ` + tp.Pods[2].IP.String() + `:8080
  }
}`
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(tp.Node.Path()), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft DNAT rules: %v: %s", err, out)
	}
}

// TestEBPFServiceDNAT: egress policy is decided on the DNATed destination, not on the
// Service IP the pod sent to.
func TestEBPFServiceDNAT(t *testing.T) {
	tp := enforcetest.NewTopology(t, 3)
	serveAll(t, tp)
	kubeProxyDNAT(t, tp)
	pin := filepath.Join(enforcetest.BPFFS(t), "patronus")
	e, err := NewEBPF(Options{PinDir: pin, NetNS: tp.Node.Path(), ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	svcB, svcC := netip.MustParseAddrPort("10.96.0.10:80"), netip.MustParseAddrPort("10.96.0.11:80")
	a, c := tp.Pods[0], tp.Pods[2]
	if err := e.Set(context.Background(), endpoints(tp)); err != nil {
		t.Fatal(err)
	}
	if !a.TCP(svcB) || !a.TCP(svcC) || !c.TCP(svcB) {
		t.Fatal("services do not work without policy")
	}
	if err := e.Set(context.Background(), policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	if !a.TCP(svcB) {
		t.Error("a -> Service of b: denied, want allowed (a's egress allows b:8080)")
	}
	if a.TCP(svcC) {
		t.Error("a -> Service of c: allowed, want denied (a's egress does not allow c)")
	}
	if c.TCP(svcB) {
		t.Error("c -> Service of b: allowed, want denied (b's ingress)")
	}
}

func vethIndex(t *testing.T, tp *enforcetest.Topology, pod int) int {
	t.Helper()
	var idx int
	err := tp.Node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(tp.Pods[pod].HostVeth)
		if err != nil {
			return err
		}
		idx = l.Attrs().Index
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// TestEBPFL3Uplink: on an uplink without a link-layer header (a tun device here;
// WireGuard in the lab), whose packets start with the IP header at TC egress, to_net_l3
// decides a local pod's egress on the DNATed destination: denied flows never reach the
// device, allowed ones do. (to_net read such packets 14 bytes too far and let them all
// through.)
func TestEBPFL3Uplink(t *testing.T) {
	tp := enforcetest.NewTopology(t, 3)
	kubeProxyDNAT(t, tp)
	const tunName = "pttun0"
	remote := netip.MustParseAddr("10.99.0.5")
	var tun *netlink.Tuntap
	err := tp.Node.Do(func(ns.NetNS) error {
		tun = &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tunName}, Mode: netlink.TUNTAP_MODE_TUN,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE, Queues: 1, NonPersist: true}
		if err := netlink.LinkAdd(tun); err != nil {
			return fmt.Errorf("tun: %w", err)
		}
		if err := netlink.LinkSetUp(tun); err != nil {
			return err
		}
		_, dst, _ := net.ParseCIDR("10.99.0.0/24")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: tun.Attrs().Index, Dst: dst})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, f := range tun.Fds {
			f.Close()
		}
	})
	rules := `table ip kpl3 {
  chain pre { type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.96.0.12 tcp dport 80 dnat to ` + remote.String() + `:8080
  }
}`
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(tp.Node.Path()), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft DNAT rule: %v: %s", err, out)
	}
	pin := filepath.Join(enforcetest.BPFFS(t), "patronus")
	e, err := NewEBPF(Options{PinDir: pin, NetNS: tp.Node.Path(), ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
		Uplinks: []string{tunName}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	a := tp.Pods[0]
	svc := netip.MustParseAddrPort("10.96.0.12:80")
	// synSeen: a's SYN to remote:8080 came out of the tun device.
	synSeen := func() bool {
		buf := make([]byte, 2048)
		deadline := time.Now().Add(time.Second)
		go func() { _, _ = a.DialTCP(svc, 500*time.Millisecond) }()
		for time.Now().Before(deadline) {
			_ = tun.Fds[0].SetReadDeadline(deadline)
			n, err := tun.Fds[0].Read(buf)
			if err != nil {
				return false
			}
			p := buf[:n]
			if n >= 24 && p[0]>>4 == 4 && p[9] == 6 && netip.AddrFrom4([4]byte(p[12:16])) == a.IP &&
				netip.AddrFrom4([4]byte(p[16:20])) == remote && int(p[0]&0xf)*4+4 <= n {
				l4 := p[int(p[0]&0xf)*4:]
				if uint16(l4[2])<<8|uint16(l4[3]) == 8080 {
					return true
				}
			}
		}
		return false
	}
	if err := e.Set(context.Background(), endpoints(tp)); err != nil {
		t.Fatal(err)
	}
	if !synSeen() {
		t.Fatal("without policy, a's connection through the Service does not leave by the tun device")
	}
	// a may send only to b: the DNATed destination is denied at the tun's TC egress.
	if err := e.Set(context.Background(), policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	if synSeen() {
		t.Error("a -> Service -> remote:8080 left by the tun device although a's egress allows only b")
	}
	var denied uint64
	counts, err := e.Denies()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range counts {
		if c.Endpoint.Pod == "a" && c.Direction == Egress {
			denied += c.Packets
		}
	}
	if denied == 0 {
		t.Errorf("no egress denial counted for a: %+v", counts)
	}
	// Allowed by a rule for the remote address: it leaves again.
	eps := policyAB(tp)
	eps[0].Egress = append(eps[0].Egress, policy.Rule{Policy: "ns/a-out", Index: 1, Peers: []policy.Peer{host32(remote)},
		Ports: []policy.PortRange{{Protocol: policy.TCP, First: 8080, Last: 8080}}})
	if err := e.Set(context.Background(), eps); err != nil {
		t.Fatal(err)
	}
	if !synSeen() {
		t.Error("a -> Service -> remote:8080 allowed by a's egress, yet it did not leave by the tun device")
	}
}

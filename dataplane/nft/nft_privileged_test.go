package nft

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/policy"
)

func pr(from, to int, proto string, port uint16, want bool) enforcetest.Probe {
	return enforcetest.Probe{From: from, To: to, Proto: proto, Port: port, Want: want}
}

func host32(a netip.Addr) policy.Peer { return policy.Peer{Prefix: netip.PrefixFrom(a, a.BitLen())} }

func endpoints(tp *enforcetest.Topology) []enforce.Endpoint {
	var out []enforce.Endpoint
	for _, p := range tp.Pods {
		out = append(out, enforce.Endpoint{
			EndpointPolicy: policy.EndpointPolicy{Namespace: "ns", Pod: p.Name, IPs: []netip.Addr{p.IP}},
			HostVeth:       p.HostVeth,
		})
	}
	return out
}

// policyAB: b admits a on TCP 8080, UDP 5353, SCTP 3868 and anything from 10.250.0.0/24
// except 10.250.0.8/29 (which holds c, .13) on TCP 9000-9100; a may send only to b on
// those ports.
func policyAB(tp *enforcetest.Topology) []enforce.Endpoint {
	eps := endpoints(tp)
	a, b := tp.Pods[0], tp.Pods[1]
	ports := []policy.PortRange{{Protocol: policy.TCP, First: 8080, Last: 8080}, {Protocol: policy.UDP, First: 5353, Last: 5353}, {Protocol: policy.SCTP, First: 3868, Last: 3868}}
	eps[1].IngressIsolated = true
	eps[1].Ingress = []policy.Rule{
		{Policy: "ns/b-in", Peers: []policy.Peer{host32(a.IP)}, Ports: ports},
		{Policy: "ns/b-in", Index: 1, Peers: []policy.Peer{{Prefix: netip.MustParsePrefix("10.250.0.0/24"), Except: []netip.Prefix{netip.MustParsePrefix("10.250.0.8/29")}}},
			Ports: []policy.PortRange{{Protocol: policy.TCP, First: 9000, Last: 9100}}},
	}
	eps[0].EgressIsolated = true
	eps[0].Egress = []policy.Rule{{Policy: "ns/a-out", Peers: []policy.Peer{host32(b.IP)}, Ports: ports}}
	return eps
}

func nftList(t *testing.T, tp *enforcetest.Topology) string {
	out, err := exec.Command("ip", "netns", "exec", filepath.Base(tp.Node.Path()), "nft", "list", "table", "inet", "patronus").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	return string(out)
}

func testMode(t *testing.T, linear bool) {
	tp := enforcetest.NewTopology(t, 3)
	tp.ServeAll(t)
	tp.NodeSysctl(t, "net/bridge/bridge-nf-call-iptables", "1")
	e, err := New(Options{NetNS: tp.Node.Path(), Linear: linear})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	if err := e.Set(ctx, endpoints(tp)); err != nil {
		t.Fatal(err)
	}
	tp.Check(t, "no policy", []enforcetest.Probe{pr(0, 1, "tcp", 8080, true), pr(2, 1, "tcp", 8080, true), pr(0, 2, "udp", 5353, true)})
	if err := e.Set(ctx, policyAB(tp)); err != nil {
		t.Fatalf("%v\n%s", err, nftList(t, tp))
	}
	probes := []enforcetest.Probe{
		pr(0, 1, "tcp", 8080, true),
		pr(2, 1, "tcp", 8080, false),
		pr(0, 1, "tcp", 9090, false),
		pr(0, 2, "tcp", 8080, false),
		pr(2, 0, "tcp", 8080, true),
		pr(0, 1, "udp", 5353, true),
		pr(2, 1, "udp", 5353, false),
		pr(0, 1, "sctp", 3868, true),
		pr(2, 1, "sctp", 3868, false),
	}
	tp.Check(t, "policy", probes)
	before := nftList(t, tp)
	if err := e.Set(ctx, policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	if after := nftList(t, tp); stripCounters(after) != stripCounters(before) {
		t.Errorf("identical Set changed the table:\n%s\n---\n%s", before, after)
	}
	tp.Check(t, "policy again", probes[:3])

	// Agent restart: a new enforcer on the existing table changes nothing on an
	// identical Set.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e, err = New(Options{NetNS: tp.Node.Path(), Linear: linear})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Set(ctx, policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	if after := nftList(t, tp); stripCounters(after) != stripCounters(before) {
		t.Errorf("Set after restart changed the table:\n%s\n---\n%s", before, after)
	}

	// Change: c admitted on 8080, then not again.
	eps := policyAB(tp)
	eps[1].Ingress = append(eps[1].Ingress, policy.Rule{Policy: "ns/b-in2", Peers: []policy.Peer{host32(tp.Pods[2].IP)},
		Ports: []policy.PortRange{{Protocol: policy.TCP, First: 8000, Last: 8090}}})
	if err := e.Set(ctx, eps); err != nil {
		t.Fatal(err)
	}
	tp.Check(t, "c admitted", []enforcetest.Probe{pr(2, 1, "tcp", 8080, true), pr(2, 1, "tcp", 9090, false)})
	if err := e.Set(ctx, policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	tp.Check(t, "c removed", []enforcetest.Probe{pr(2, 1, "tcp", 8080, false)})
	denies, err := e.Denies()
	if err != nil {
		t.Fatal(err)
	}
	var bIn uint64
	for _, d := range denies {
		if d.Endpoint.Pod == "b" && d.Direction == enforce.Ingress {
			bIn += d.Packets
		}
	}
	if bIn == 0 {
		t.Errorf("no denies counted for b ingress: %+v", denies)
	}
	if err := e.Remove(ctx, eps[1]); err != nil {
		t.Fatal(err)
	}
	tp.Check(t, "b removed", []enforcetest.Probe{pr(2, 1, "tcp", 8080, true)})
	if got := nftList(t, tp); strings.Contains(got, "i"+epTag("ns/b")) {
		t.Errorf("chain of b left after Remove:\n%s", got)
	}
}

func stripCounters(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "counter packets") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestNftSets(t *testing.T)   { testMode(t, false) }
func TestNftLinear(t *testing.T) { testMode(t, true) }

// TestNftServiceDNAT: the forward hook sees the DNATed destination, so egress rules
// hold for traffic sent to a Service IP.
func TestNftServiceDNAT(t *testing.T) {
	tp := enforcetest.NewTopology(t, 3)
	tp.ServeAll(t)
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
	e, err := New(Options{NetNS: tp.Node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Set(context.Background(), policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	a, c := tp.Pods[0], tp.Pods[2]
	svcB, svcC := netip.MustParseAddrPort("10.96.0.10:80"), netip.MustParseAddrPort("10.96.0.11:80")
	ok := false
	for i := 0; i < 3 && !ok; i++ {
		ok = a.TCP(svcB)
	}
	if !ok {
		t.Error("a -> Service of b: denied, want allowed")
	}
	if a.TCP(svcC) {
		t.Error("a -> Service of c: allowed, want denied (a's egress)")
	}
	if c.TCP(svcB) {
		t.Error("c -> Service of b: allowed, want denied (b's ingress)")
	}
}

// TestNftKeepsOtherChains: chains other parts of Patronus keep in the same table
// (nodenet's masquerade, the tunnel's MSS clamp) survive every Set and Remove.
func TestNftKeepsOtherChains(t *testing.T) {
	tp := enforcetest.NewTopology(t, 2)
	e, err := New(Options{NetNS: tp.Node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	if err := e.Set(ctx, policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(tp.Node.Path()), "nft", "add", "chain", "inet", "patronus", "nodenet-masq")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("add foreign chain: %v: %s", err, out)
	}
	eps := policyAB(tp)
	eps[1].Ingress = eps[1].Ingress[:1] // a change: content chains are replaced
	if err := e.Set(ctx, eps); err != nil {
		t.Fatal(err)
	}
	if err := e.Remove(ctx, eps[0]); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(nftList(t, tp), "chain nodenet-masq") {
		t.Fatal("the enforcer deleted a chain it does not own")
	}
}

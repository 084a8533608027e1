package nodenet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
)

// strictNS makes an empty named namespace, removed at cleanup.
func strictNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and nftables chains in it")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (apt-get install nftables) to read the chain back")
	}
	buf := make([]byte, 4)
	rand.Read(buf)
	name := "pt-nns-" + hex.EncodeToString(buf)
	enforcetest.NewNS(t, name)
	return name
}

func nftList(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	return string(out)
}

// SetStrict writes the chain nft shows, leaves it alone when asked again, rewrites it
// for another block, keeps the masquerade chain of the same table, and removes only its
// own chain when strict goes off.
func TestSetStrictKernel(t *testing.T) {
	ns := strictNS(t)
	dp, err := OpenDatapath("/var/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	sd := dp.(StrictDatapath)
	if err := dp.SetMasquerade(Masquerade{Sources: []netip.Prefix{pfx("10.244.1.0/24")}, Cluster: []netip.Prefix{pfx("10.244.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	remote := []netip.Prefix{pfx("10.248.0.0/16")}
	s := Strict{Sources: []netip.Prefix{pfx("10.244.1.0/24")}, Guarded: StrictDestinations([]netip.Prefix{pfx("10.244.0.0/22")}, pfx("10.244.1.0/24"), remote),
		Remote: StrictRemote(remote, pfx("10.244.1.0/24")), Device: WGDevice}
	if _, err := sd.SetStrict(s); err != nil {
		t.Fatal(err)
	}
	rs := nftList(t, ns)
	for _, want := range []string{
		"chain nodenet-strict {",
		"type filter hook forward priority filter; policy accept;",
		`ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/24 oifname != "ptw0" counter packets 0 bytes 0 drop`,
		`ip saddr 10.244.1.0/24 ip daddr 10.244.2.0/23 oifname != "ptw0" counter packets 0 bytes 0 drop`,
		// The remote clusters' CIDR: ptw0 or a tunnel device (the wildcard, as nft shows it).
		`ip saddr 10.244.1.0/24 ip daddr 10.248.0.0/16 oifname != "ptw0" oifname != "wg*" counter packets 0 bytes 0 drop`,
		"chain nodenet-masq {",
	} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	handles := func() string {
		out, _ := exec.Command("ip", "netns", "exec", ns, "nft", "-a", "list", "chain", "inet", "patronus", DefaultStrictChain).CombinedOutput()
		return string(out)
	}
	before := handles()
	if _, err := sd.SetStrict(s); err != nil {
		t.Fatal(err)
	}
	if after := handles(); after != before {
		t.Fatalf("the same chain rewritten:\n%s\nthen\n%s", before, after)
	}
	s.Sources = []netip.Prefix{pfx("10.244.2.0/24")}
	s.Guarded = StrictDestinations([]netip.Prefix{pfx("10.244.0.0/22")}, pfx("10.244.2.0/24"), remote)
	if _, err := sd.SetStrict(s); err != nil {
		t.Fatal(err)
	}
	if rs := nftList(t, ns); strings.Contains(rs, "saddr 10.244.1.0/24 ip daddr 10.") || !strings.Contains(rs, `ip saddr 10.244.2.0/24 ip daddr 10.244.3.0/24 oifname != "ptw0"`) ||
		!strings.Contains(rs, `ip saddr 10.244.2.0/24 ip daddr 10.248.0.0/16 oifname != "ptw0" oifname != "wg*"`) {
		t.Fatalf("not rewritten for the new block:\n%s", rs)
	}
	// The remote CIDRs alone change: the chain is rewritten too.
	s.Remote = []netip.Prefix{pfx("10.250.0.0/16")}
	if _, err := sd.SetStrict(s); err != nil {
		t.Fatal(err)
	}
	if rs := nftList(t, ns); strings.Contains(rs, "10.248.0.0/16") || !strings.Contains(rs, `ip saddr 10.244.2.0/24 ip daddr 10.250.0.0/16 oifname != "ptw0" oifname != "wg*"`) {
		t.Fatalf("not rewritten for the new remote cidr:\n%s", rs)
	}
	if _, err := sd.SetStrict(Strict{}); err != nil {
		t.Fatal(err)
	}
	if rs := nftList(t, ns); strings.Contains(rs, DefaultStrictChain) || !strings.Contains(rs, "chain nodenet-masq {") {
		t.Fatalf("strict off: want only the masquerade chain left:\n%s", rs)
	}
	if _, err := sd.SetStrict(Strict{}); err != nil { // nothing to remove
		t.Fatal(err)
	}
}

// Strict mode on real traffic, one node namespace forwarding its pod's packets: to a
// remote cluster's CIDR they pass when they leave by ptw0 or by a tunnel device (a
// gateway's `wg-<cluster>`), and are dropped (counted) when they leave by any other
// interface; to another node's pod block they pass only by ptw0. The exits are veths
// named as the devices (the rules match names), each to a namespace answering for both
// destinations. With strict off the plain exit carries the same traffic, so the test
// can fail.
func TestStrictKernelTraffic(t *testing.T) {
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("needs ping (apt-get install iputils-ping)")
	}
	node, pod := strictNS(t), strictNS(t)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	const remoteAddr, peerPod = "10.248.0.1", "10.244.2.1"
	ip("-n", node, "link", "add", "hp0", "type", "veth", "peer", "name", "p0", "netns", pod)
	ip("-n", node, "addr", "add", "10.244.1.1/24", "dev", "hp0")
	ip("-n", node, "link", "set", "hp0", "up")
	ip("-n", pod, "addr", "add", "10.244.1.2/24", "dev", "p0")
	ip("-n", pod, "link", "set", "p0", "up")
	ip("-n", pod, "route", "add", "default", "via", "10.244.1.1")
	if out, err := exec.Command("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("ip_forward in %s: %v: %s", node, err, out)
	}
	// Exit i: node-side veth dev (192.0.2.4i+1/30) to a namespace (…+2) holding both
	// destinations on its loopback and routing the pod block back.
	gws := map[string]string{}
	for i, dev := range []string{WGDevice, "wg-c1", "eth1"} {
		far := strictNS(t)
		near, other := fmt.Sprintf("192.0.2.%d", 4*i+1), fmt.Sprintf("192.0.2.%d", 4*i+2)
		ip("-n", node, "link", "add", dev, "type", "veth", "peer", "name", "x0", "netns", far)
		ip("-n", node, "addr", "add", near+"/30", "dev", dev)
		ip("-n", node, "link", "set", dev, "up")
		ip("-n", far, "addr", "add", other+"/30", "dev", "x0")
		ip("-n", far, "link", "set", "x0", "up")
		ip("-n", far, "link", "set", "lo", "up")
		ip("-n", far, "addr", "add", remoteAddr+"/32", "dev", "lo")
		ip("-n", far, "addr", "add", peerPod+"/32", "dev", "lo")
		ip("-n", far, "route", "add", "10.244.1.0/24", "via", near)
		gws[dev] = other
	}
	via := func(dst, dev string) {
		t.Helper()
		ip("-n", node, "route", "replace", dst, "via", gws[dev], "dev", dev)
	}
	pings := func(addr string) bool {
		return exec.Command("ip", "netns", "exec", pod, "ping", "-c", "1", "-W", "1", addr).Run() == nil
	}

	dp, err := OpenDatapath("/var/run/netns/" + node)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	sd := dp.(StrictDatapath)
	own, remote := pfx("10.244.1.0/24"), []netip.Prefix{pfx("10.248.0.0/16")}
	s := Strict{Sources: []netip.Prefix{own}, Guarded: StrictDestinations([]netip.Prefix{pfx("10.244.0.0/16")}, own, remote),
		Remote: StrictRemote(remote, own), Device: WGDevice, TunnelDevices: StrictTunnelDevices}

	// Strict off: every exit carries both (the plain ones too).
	for _, dev := range []string{WGDevice, "wg-c1", "eth1"} {
		via("10.248.0.0/16", dev)
		via("10.244.2.0/24", dev)
		if !pings(remoteAddr) || !pings(peerPod) {
			t.Fatalf("strict off, exit %s: no answer: the setup is broken", dev)
		}
	}
	if _, err := sd.SetStrict(s); err != nil {
		t.Fatal(err)
	}
	var drops uint64
	for _, tc := range []struct {
		dst, addr, dev string
		pass           bool
	}{
		{"10.248.0.0/16", remoteAddr, WGDevice, true},
		{"10.248.0.0/16", remoteAddr, "wg-c1", true}, // a gateway's pods into the tunnel
		{"10.248.0.0/16", remoteAddr, "eth1", false}, // a non-gateway node's plain leg
		{"10.244.2.0/24", peerPod, WGDevice, true},
		{"10.244.2.0/24", peerPod, "wg-c1", false}, // node-to-node: ptw0 only
		{"10.244.2.0/24", peerPod, "eth1", false},
	} {
		via(tc.dst, tc.dev)
		if got := pings(tc.addr); got != tc.pass {
			t.Errorf("strict, %s via %s: answered %v, want %v", tc.addr, tc.dev, got, tc.pass)
		}
		n, err := sd.SetStrict(s)
		if err != nil {
			t.Fatal(err)
		}
		if more := n > drops; more == tc.pass {
			t.Errorf("strict, %s via %s: drop counter %d → %d", tc.addr, tc.dev, drops, n)
		}
		drops = n
	}
	if t.Failed() {
		t.Logf("ruleset:\n%s", nftList(t, node))
	}
}

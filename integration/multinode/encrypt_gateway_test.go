package multinode

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/patronus/patronus/dataplane/route"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/nodenet"
)

// The node→gateway leg of traffic to a remote cluster under node encryption (issue 8):
// a pod on a node that is not the gateway sends to an address of a remote cluster's pod
// CIDR. The gateway node's namespace stands in for the remote side (the address is on a
// loopback there, with a TCP echo of the client's address). nodenet.RemoteLeg on the
// non-gateway node decides, from its live WireGuard device, that the gateway's peer
// carries the remote CIDR; the route the agent then installs (`<cidr> dev ptw0`, proto
// 77, as agent.overWireGuard makes it) carries the packets to the gateway with no frame
// of the pod's (or the remote side's) address on the underlay, only WireGuard. The old
// route (`via <gateway> dev eth0`) puts them on the underlay in the clear, so the counter
// can fail. The gateway turning encryption off makes the decision fall back to plain with
// a reason; turning it on again makes it encrypted again.
func TestNodeEncryptionGatewayLeg(t *testing.T) {
	requireEncryptionTools(t)
	cluster := k8senv.Start(t)
	pluginDir(t)
	l := newLab(t, cluster, "kube-system")
	l.encrypt = nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard}
	remote := netip.MustParsePrefix("10.248.0.0/16")
	remoteAddr := netip.MustParseAddr("10.248.0.1")
	l.remote = []netip.Prefix{remote}
	count := underlayCounters(t, l, l.cidr, nodenet.WGPort, remote)

	gw := l.addNode("eg-node-1", netip.MustParseAddr("192.168.77.31"), "10.244.141.0/24")
	markGateway(t, l, gw)
	n2 := l.addNode("eg-node-2", netip.MustParseAddr("192.168.77.32"), "10.244.142.0/24")
	nodes := []*node{gw, n2}
	for _, n := range nodes {
		encryptedTo(t, n, nodes)
	}

	// The remote side, behind the gateway: 10.248.0.1 (on the gateway's loopback: this
	// kernel has no dummy links) answers ICMP and echoes TCP clients' addresses.
	h := handleIn(t, gw.netns)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: remoteAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	serveTCP(t, gw.netns, remoteAddr, 8080)
	p := l.addPod(n2, "eg-node-2-p0")

	// The agent's router on the non-gateway node (proto 77, as startTunnelRoutes has it).
	k, err := route.NewNetlinkKernel(nsPath(n2.netns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	router := route.NewRouter(route.Options{Kernel: k})
	setRoute := func(r route.Route, want string) {
		t.Helper()
		if _, err := router.Set(route.Desired{Routes: []route.Route{r}}); err != nil {
			t.Fatalf("route %s: %v", r, err)
		}
		out, err := exec.Command("ip", "-n", n2.netns, "route", "show", "proto", "77").CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("routes proto 77 on %s: %v %q, want %q", n2.name, err, out, want)
		}
	}
	leg := func() nodenet.RemoteLeg {
		return n2.ctrl.RemoteLeg(gw.name, gatewayKey(t, l, gw), []netip.Prefix{remote})
	}
	reach := func(what string) {
		t.Helper()
		eventually(t, 30*time.Second, what+": pod pings the remote address", func() error { return ping(p.netns, remoteAddr) })
		got, err := dialTCP(p.netns, remoteAddr, 8080)
		if err != nil || got != p.ip.String() {
			t.Fatalf("%s: TCP to %s: saw %q %v, want the pod's own address %s", what, remoteAddr, got, err, p.ip)
		}
	}
	encryptedLeg := func(what string) {
		t.Helper()
		eventually(t, 30*time.Second, what+": the gateway's peer carries "+remote.String(), func() error {
			if l := leg(); len(l.Encrypted) != 1 || len(l.Plain) != 0 {
				return fmt.Errorf("leg %+v", l)
			}
			return nil
		})
		setRoute(route.Route{Dst: remote, Dev: nodenet.WGDevice}, remote.String()+" dev "+nodenet.WGDevice)
		plain0, wg0 := count()
		reach(what)
		plain1, wg1 := count()
		t.Logf("%s: underlay saw %d plaintext frames from pod or remote addresses, %d WireGuard frames", what, plain1-plain0, wg1-wg0)
		if plain1 != plain0 {
			t.Fatalf("%s: %d frames with the pod's or the remote side's address crossed the underlay in the clear", what, plain1-plain0)
		}
		if wg1 == wg0 {
			t.Fatalf("%s: no WireGuard frame on the underlay: the traffic did not go through WireGuard", what)
		}
	}
	encryptedLeg("encrypted leg")

	// The route a non-gateway node had before (and keeps when the leg is plain): the same
	// traffic now shows on the underlay in the clear, so the counter can see it.
	setRoute(route.Route{Dst: remote, Via: gw.addr, Dev: "eth0"}, remote.String()+" via "+gw.addr.String()+" dev eth0")
	before, _ := count()
	reach("plain route")
	if after, _ := count(); after == before {
		t.Fatal("plain route: the underlay counter saw no plaintext frame: it could not see any")
	}

	// The gateway turns encryption off: its key is withdrawn, the decision falls back to
	// plain and says why, and the plain route works (the gateway answers in the clear).
	l.stop(gw)
	gw.encrypt = &nodenet.Encrypt{Mode: nodenet.EncryptionNone}
	l.start(gw)
	eventually(t, 30*time.Second, "leg plain once the gateway withdrew its key", func() error {
		lg := leg()
		if len(lg.Encrypted) != 0 || len(lg.Plain) != 1 || lg.Reason != nodenet.LegNoGatewayKey {
			return fmt.Errorf("leg %+v", lg)
		}
		return nil
	})
	t.Logf("gateway without encryption: %s", leg())
	reach("gateway unencrypted, plain route")

	// And on again: the same key comes back (node database), the leg is encrypted again.
	l.stop(gw)
	gw.encrypt = nil
	l.start(gw)
	encryptedLeg("gateway encrypted again")
}

// Strict node encryption on the node→gateway leg of traffic to a remote cluster (issue
// 8): the gateway here forwards the remote CIDR into a device named as a tunnel device
// (`wg-eg1`, a veth to a namespace standing in for the remote cluster). Step by step:
//   - the gateway publishes no key, so the non-gateway node keeps the plain route (`via
//     <gateway> dev eth0`); with strict off its pod reaches the remote side and the
//     underlay counter sees plaintext (it can fail);
//   - the non-gateway node restarts strict: the same traffic gets no answer, not one
//     plaintext frame crosses the underlay, the strict chain counts drops, and the leg
//     (the status line's text) says DROPPED, not in the clear;
//   - the gateway gets a key and goes strict too: the leg is encrypted, the non-gateway
//     pod's traffic flows over ptw0 (no plaintext, WireGuard frames seen), and the
//     gateway's own pod reaches the remote side through `wg-eg1` (its strict chain lets
//     tunnel devices through).
func TestNodeEncryptionStrictGatewayLeg(t *testing.T) {
	requireEncryptionTools(t)
	cluster := k8senv.Start(t)
	pluginDir(t)
	l := newLab(t, cluster, "kube-system")
	l.encrypt = nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard}
	remote := netip.MustParsePrefix("10.248.0.0/16")
	remoteAddr := netip.MustParseAddr("10.248.0.1")
	l.remote = []netip.Prefix{remote}
	count := underlayCounters(t, l, l.cidr, nodenet.WGPort, remote)

	gw := l.makeNodeWith("sg-node-1", netip.MustParseAddr("192.168.77.41"), "10.244.161.0/24", &nodenet.Encrypt{Mode: nodenet.EncryptionNone})
	markGateway(t, l, gw)
	n2 := l.addNode("sg-node-2", netip.MustParseAddr("192.168.77.42"), "10.244.162.0/24")

	// The remote cluster behind the gateway's tunnel device: namespace r, reached from
	// the gateway by veth wg-eg1 (the strict rules match the name), routing the pod space back.
	r := makeNS(t, "r")
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("-n", gw.netns, "link", "add", "wg-eg1", "type", "veth", "peer", "name", "r0", "netns", r)
	ip("-n", gw.netns, "addr", "add", "192.0.2.1/30", "dev", "wg-eg1")
	ip("-n", gw.netns, "link", "set", "wg-eg1", "up")
	ip("-n", gw.netns, "route", "add", remote.String(), "via", "192.0.2.2", "dev", "wg-eg1")
	ip("-n", r, "addr", "add", "192.0.2.2/30", "dev", "r0")
	ip("-n", r, "link", "set", "r0", "up")
	ip("-n", r, "link", "set", "lo", "up")
	ip("-n", r, "addr", "add", remoteAddr.String()+"/32", "dev", "lo")
	ip("-n", r, "route", "add", l.cidr.String(), "via", "192.0.2.1")
	serveTCP(t, r, remoteAddr, 8080)
	p := l.addPod(n2, "sg-node-2-p0")
	fromPod := sourceCounter(t, l, netip.PrefixFrom(p.ip, 32))

	// The agent's router on the non-gateway node (proto 77, as startTunnelRoutes has it).
	k, err := route.NewNetlinkKernel(nsPath(n2.netns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	router := route.NewRouter(route.Options{Kernel: k})
	setRoute := func(rt route.Route) {
		t.Helper()
		if _, err := router.Set(route.Desired{Routes: []route.Route{rt}}); err != nil {
			t.Fatalf("route %s: %v", rt, err)
		}
	}
	leg := func() nodenet.RemoteLeg {
		return n2.ctrl.RemoteLeg(gw.name, gatewayKey(t, l, gw), []netip.Prefix{remote})
	}
	reach := func(what string, from *pod) {
		t.Helper()
		eventually(t, 30*time.Second, what+": "+from.name+" pings the remote address", func() error { return ping(from.netns, remoteAddr) })
		got, err := dialTCP(from.netns, remoteAddr, 8080)
		if err != nil || got != from.ip.String() {
			t.Fatalf("%s: TCP to %s: saw %q %v, want the pod's own address %s", what, remoteAddr, got, err, from.ip)
		}
	}
	legIs := func(what string, strict bool, has string) {
		t.Helper()
		eventually(t, 30*time.Second, what, func() error {
			if lg := leg(); len(lg.Plain) != 1 || lg.Reason != nodenet.LegNoGatewayKey || lg.Strict != strict || !strings.Contains(lg.String(), has) {
				return fmt.Errorf("leg %+v %q", lg, lg.String())
			}
			return nil
		})
	}

	// Strict off, gateway without a key: the plain leg carries the traffic in the clear.
	legIs("plain leg, strict off", false, " in the clear: ")
	setRoute(route.Route{Dst: remote, Via: gw.addr, Dev: "eth0"})
	before, _ := count()
	reach("strict off, plain route", p)
	if after, _ := count(); after == before {
		t.Fatal("strict off: the underlay counter saw no plaintext frame: it could not see any")
	}

	// Strict on at the non-gateway node: the plain route stays, the traffic is dropped.
	l.stop(n2)
	n2.encrypt = &nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard, Strict: true}
	l.start(n2)
	legIs("leg dropped under strict", true, " "+nodenet.LegStrictDropped+": ")
	t.Logf("non-gateway node, strict, gateway without a key: %s", leg())
	rs := nftRuleset(t, n2.netns)
	if want := `ip saddr 10.244.162.0/24 ip daddr 10.248.0.0/16 oifname != "ptw0" oifname != "wg*" counter`; !strings.Contains(rs, want) {
		t.Fatalf("non-gateway node's ruleset lacks %q:\n%s", want, rs)
	}
	if out, err := exec.Command("ip", "-n", n2.netns, "route", "show", "proto", "77").CombinedOutput(); err != nil ||
		!strings.Contains(string(out), remote.String()+" via "+gw.addr.String()+" dev eth0") {
		t.Fatalf("the plain route must stay under strict: %v %s", err, out)
	}
	plain0, _ := count()
	src0 := fromPod()
	if err := ping(p.netns, remoteAddr); err == nil {
		t.Error("strict, plain leg: ping answered")
	}
	if got, err := dialTCP(p.netns, remoteAddr, 8080); err == nil {
		t.Errorf("strict, plain leg: TCP answered (seen from %s)", got)
	}
	plain1, _ := count()
	if src1 := fromPod(); plain1 != plain0 || src1 != src0 {
		t.Errorf("strict, plain leg: %d plaintext frames (%d from the pod) crossed the underlay", plain1-plain0, src1-src0)
	}
	eventually(t, 30*time.Second, "the non-gateway node counts the drops", func() error {
		if st := n2.ctrl.Status(); !st.Strict || st.StrictDropped == 0 {
			return fmt.Errorf("strict %v dropped %d", st.Strict, st.StrictDropped)
		}
		return nil
	})
	if t.Failed() {
		t.FailNow()
	}

	// The gateway gets a key, strict too: the leg goes over ptw0 and flows under strict.
	l.stop(gw)
	gw.encrypt = &nodenet.Encrypt{Mode: nodenet.EncryptionWireGuard, Strict: true}
	l.start(gw)
	eventually(t, 30*time.Second, "the gateway's peer carries "+remote.String(), func() error {
		if lg := leg(); len(lg.Encrypted) != 1 || len(lg.Plain) != 0 || lg.String() != "" {
			return fmt.Errorf("leg %+v", lg)
		}
		return nil
	})
	setRoute(route.Route{Dst: remote, Dev: nodenet.WGDevice})
	encPlain0, wg0 := count()
	reach("strict, encrypted leg", p)
	encPlain1, wg1 := count()
	t.Logf("strict, encrypted leg: underlay saw %d plaintext frames, %d WireGuard frames", encPlain1-encPlain0, wg1-wg0)
	if encPlain1 != encPlain0 {
		t.Errorf("strict, encrypted leg: %d plaintext frames crossed the underlay", encPlain1-encPlain0)
	}
	if wg1 == wg0 {
		t.Error("strict, encrypted leg: no WireGuard frame on the underlay")
	}

	// The gateway's own pod: its remote traffic leaves by the tunnel device, which its
	// strict chain lets through.
	eventually(t, 30*time.Second, "the gateway is strict", func() error {
		if st := gw.ctrl.Status(); !st.Strict {
			return fmt.Errorf("gateway status strict false (last error %q)", st.LastError)
		}
		return nil
	})
	if rs := nftRuleset(t, gw.netns); !strings.Contains(rs, `ip saddr 10.244.161.0/24 ip daddr 10.248.0.0/16 oifname != "ptw0" oifname != "wg*" counter packets 0`) {
		t.Fatalf("gateway's ruleset lacks the remote rule (or it dropped already):\n%s", rs)
	}
	gp := l.addPod(gw, "sg-node-1-p0")
	reach("strict gateway, into wg-eg1", gp)
	if rs := nftRuleset(t, gw.netns); !strings.Contains(rs, `ip saddr 10.244.161.0/24 ip daddr 10.248.0.0/16 oifname != "ptw0" oifname != "wg*" counter packets 0`) {
		t.Errorf("the gateway's strict chain dropped its pod's tunnel traffic:\n%s", rs)
	}
}

// markGateway labels n's Node patronus.io/gateway=true.
func markGateway(t *testing.T, l *lab, n *node) {
	t.Helper()
	patch := []byte(`{"metadata":{"labels":{"` + nodenet.GatewayLabel + `":"true"}}}`)
	if _, err := l.client.CoreV1().Nodes().Patch(context.Background(), n.name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// gatewayKey is the node-to-node WireGuard key n published on its Node (zero: none), as
// the agent of a non-gateway node reads it.
func gatewayKey(t *testing.T, l *lab, n *node) wgtypes.Key {
	t.Helper()
	obj, err := l.client.CoreV1().Nodes().Get(context.Background(), n.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return nodenet.ParseWGKey(obj.Annotations[nodenet.AnnotationWGKey])
}

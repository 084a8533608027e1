// Package tunneltest runs the tunnel dataplane for real: two cluster gateway namespaces
// joined by an underlay veth, each with a bridge and a pod namespace (the seed's
// 10.244.0.0/16 and 10.248.0.0/16), userspace WireGuard devices made by dataplane/wg
// inside the gateway namespaces, routes by dataplane/route, plans by dataplane/tunnel.
package tunneltest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/dataplane/route"
	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/dataplane/wg"
)

// side is one cluster: its gateway namespace (underlay + bridge + WireGuard) and a pod.
type side struct {
	cluster  string
	gwName   string
	gw       ns.NetNS
	pod      ns.NetNS
	podName  string
	podIP    netip.Addr
	podCIDR  netip.Prefix
	underlay netip.Addr
	spec     wg.Spec
	dev      wg.Device
	kernel   *route.NetlinkKernel
	router   *route.Router
	rec      *tunnel.Reconciler
}

func (s *side) endpoint() netip.AddrPort { return netip.AddrPortFrom(s.underlay, wg.DefaultPort) }

func (s *side) gateway(key wgtypes.Key) tunnel.Gateway {
	return tunnel.Gateway{Cluster: s.cluster, Node: s.cluster + "-gw", PublicKey: key,
		Endpoints: []netip.AddrPort{s.endpoint()}, PodCIDRs: []netip.Prefix{s.podCIDR}}
}

func (s *side) input(remotes ...tunnel.Gateway) tunnel.Input {
	return tunnel.Input{LocalCluster: s.cluster, Gateway: true, Keepalive: 0, Gateways: remotes}
}

func randID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newPair builds both sides with in-process WireGuard devices, routers and reconcilers;
// the devices have no peers yet.
func newPair(t *testing.T) (a, b *side) {
	t.Helper()
	a, b = newTopology(t)
	for _, s := range []*side{a, b} {
		s.openDevice(t, mustKey(t))
		var err error
		s.kernel, err = route.NewNetlinkKernel(s.gw.Path())
		must(t, err)
		t.Cleanup(s.kernel.Close)
		s.router = route.NewRouter(route.Options{Kernel: s.kernel})
		gwPath := s.gw.Path()
		s.rec = tunnel.NewReconciler(tunnel.ReconcilerOptions{Device: s.dev, Routes: s.router,
			MSS: func(devs []string) error { return wg.EnsureMSSClamp(gwPath, devs) }})
	}
	return a, b
}

// newTopology builds the namespaces, underlay, bridges and pods of both sides.
func newTopology(t *testing.T) (a, b *side) {
	t.Helper()
	enforcetest.RequireRoot(t)
	id := randID()
	a = &side{cluster: "cluster-a", podIP: netip.MustParseAddr("10.244.0.2"), podCIDR: netip.MustParsePrefix("10.244.0.0/16"), underlay: netip.MustParseAddr("192.168.100.1")}
	b = &side{cluster: "cluster-b", podIP: netip.MustParseAddr("10.248.0.2"), podCIDR: netip.MustParsePrefix("10.248.0.0/16"), underlay: netip.MustParseAddr("192.168.100.2")}
	for _, s := range []*side{a, b} {
		s.gwName = "pt-tn-" + id + "-" + s.cluster[len(s.cluster)-1:]
		s.podName = s.gwName + "p"
		s.gw = enforcetest.NewNS(t, s.gwName)
		s.pod = enforcetest.NewNS(t, s.podName)
	}
	// Underlay: one veth between the two gateway namespaces.
	must(t, a.gw.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0", MTU: 1500}, PeerName: "ul0b",
			PeerNamespace: netlink.NsFd(int(b.gw.Fd()))})
	}))
	must(t, b.gw.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("ul0b")
		if err != nil {
			return err
		}
		return netlink.LinkSetName(l, "ul0")
	}))
	for _, s := range []*side{a, b} {
		gwAddr := s.podCIDR.Addr().Next() // 10.x.0.1
		must(t, s.gw.Do(func(ns.NetNS) error {
			if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
				return err
			}
			if err := up("lo"); err != nil {
				return err
			}
			if err := addrUp("ul0", netip.PrefixFrom(s.underlay, 24)); err != nil {
				return err
			}
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
				return err
			}
			if err := addrUp("br0", netip.PrefixFrom(gwAddr, s.podCIDR.Bits())); err != nil {
				return err
			}
			return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vpod"}, PeerName: "eth0",
				PeerNamespace: netlink.NsFd(int(s.pod.Fd()))})
		}))
		must(t, s.gw.Do(func(ns.NetNS) error {
			br, _ := netlink.LinkByName("br0")
			v, err := netlink.LinkByName("vpod")
			if err != nil {
				return err
			}
			if err := netlink.LinkSetMaster(v, br); err != nil {
				return err
			}
			return netlink.LinkSetUp(v)
		}))
		must(t, s.pod.Do(func(ns.NetNS) error {
			if err := up("lo"); err != nil {
				return err
			}
			if err := addrUp("eth0", netip.PrefixFrom(s.podIP, s.podCIDR.Bits())); err != nil {
				return err
			}
			return netlink.RouteAdd(&netlink.Route{Gw: gwAddr.AsSlice()})
		}))
	}
	return a, b
}

// openDevice creates the side's WireGuard device with key (also used to "restart").
func (s *side) openDevice(t *testing.T, key wgtypes.Key) {
	t.Helper()
	s.spec = wg.Spec{Name: wg.InterfaceName(s.cluster), ListenPort: wg.DefaultPort, PrivateKey: key, MTU: 1500 - wg.Overhead}
	o := wg.Options{NetNS: s.gw.Path(), Mode: wg.ModeUserspace}
	// WireGuard's errors (a failed TUN write, a rejected packet) always reach the test
	// log; its verbose handshake log only with PATRONUS_TUNNEL_DEBUG=1.
	level := slog.LevelWarn
	if os.Getenv("PATRONUS_TUNNEL_DEBUG") != "" {
		level = slog.LevelDebug
	}
	tw := &testWriter{t: t}
	t.Cleanup(func() { tw.done.Store(true) }) // runs after the device's Close (LIFO)
	o.Logger = slog.New(slog.NewTextHandler(tw, &slog.HandlerOptions{Level: level})).With("side", s.cluster)
	d, err := wg.Open(o, s.spec)
	must(t, err)
	t.Cleanup(func() { d.Close() })
	s.dev = d
}

func mustKey(t *testing.T) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	must(t, err)
	return k
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func up(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

func addrUp(name string, p netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// ping runs one ping from netns; nil when answered.
func ping(netns string, dst netip.Addr, size int) error {
	args := []string{"netns", "exec", netns, "ping", "-c1", "-W1", "-n"}
	if size > 0 {
		args = append(args, "-s", fmt.Sprint(size))
	}
	out, err := exec.Command("ip", append(args, dst.String())...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", dst, netns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			// What the namespaces look like, for a failure seen only in CI (with
			// PATRONUS_TUNNEL_DEBUG=1 the WireGuard devices also log every handshake).
			out, _ := exec.Command("sh", "-c", "for n in $(ip netns list | awk '/^pt-tn-/{print $1}'); do echo == $n; ip -n $n route; ip -n $n -s link show; ip netns exec $n nft list ruleset; done").CombinedOutput()
			t.Logf("namespaces:\n%s", out)
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func listenIn(n ns.NetNS, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

func dialIn(ctx context.Context, n ns.NetNS, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func(ns.NetNS) error {
		var err error
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// tcpEcho opens a TCP connection from pod src to pod dst, sends n bytes and expects them
// echoed back.
func tcpEcho(t *testing.T, src, dst *side, n int) error {
	t.Helper()
	l, err := listenIn(dst.pod, net.JoinHostPort(dst.podIP.String(), "0"))
	if err != nil {
		return err
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := dialIn(ctx, src.pod, l.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if ra := c.RemoteAddr().(*net.TCPAddr); ra.IP.String() != dst.podIP.String() {
		return fmt.Errorf("connected to %v", ra)
	}
	payload := make([]byte, n)
	_, _ = rand.Read(payload)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		errc <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("echo of %d bytes: %w", n, err)
	}
	if err := <-errc; err != nil {
		return err
	}
	if string(got) != string(payload) {
		return errors.New("echoed bytes differ")
	}
	return nil
}

func routesProto77(t *testing.T, netns string) string {
	out, err := exec.Command("ip", "-n", netns, "route", "show", "proto", "77").CombinedOutput()
	must(t, err)
	return string(out)
}

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// testWriter sends log lines to t.Log.
// Lines after the test ended are dropped (t.Log would panic).
type testWriter struct {
	t    *testing.T
	done atomic.Bool
}

func (w *testWriter) Write(b []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

// handshakeTimeout bounds waiting for a tunnel to pass traffic. A handshake that is
// lost (an initiation reaching a side that has not added the peer yet, or two initiations
// crossing) is retried by WireGuard after 5 s, so up to ~11 s is legitimate.
const handshakeTimeout = 15 * time.Second

// waitTunnel waits until pod A reaches pod B through the tunnel; on failure it logs both
// devices' peers (handshake times, byte counters, endpoints) besides the namespace dump.
func waitTunnel(t *testing.T, a, b *side) {
	t.Helper()
	deadline := time.Now().Add(handshakeTimeout)
	for {
		err := ping(a.podName, b.podIP, 0)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			for _, s := range []*side{a, b} {
				if st, serr := s.dev.State(); serr == nil {
					t.Logf("%s device: port %d, public key %s, peers %+v", s.cluster, st.ListenPort, st.PublicKey, st.Peers)
				}
			}
			eventually(t, 0, "pod A pings pod B through the tunnel", func() error { return ping(a.podName, b.podIP, 0) })
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

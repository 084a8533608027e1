// Package enforcetest builds throwaway node and pod network namespaces (a bridge and
// veths, made with netlink) and probes real TCP, UDP and crafted SCTP connectivity
// between them, for the datapath tests of dataplane/enforce and dataplane/nft.
package enforcetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Pod is one pod namespace attached to the node's bridge.
type Pod struct {
	Name     string
	NS       ns.NetNS
	IP       netip.Addr
	HostVeth string
}

// Topology is a node namespace with bridge br0 (10.250.0.1/24) and pods on it.
type Topology struct {
	ID      string
	Node    ns.NetNS
	Gateway netip.Addr
	Pods    []*Pod
}

// RequireRoot skips a test that cannot run without root, saying why.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (netns, BPF, nftables); CI runs as root")
	}
}

func randID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewNS creates a named network namespace and removes it at cleanup.
func NewNS(t testing.TB, name string) ns.NetNS {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("creating netns %s: %v", name, err)
	}
	h.Close()
	if err := netns.Set(orig); err != nil {
		// This thread is now in the wrong namespace: do not give it back to the runtime.
		runtime.Goexit()
	}
	t.Cleanup(func() { _ = netns.DeleteNamed(name) })
	n, err := ns.GetNS(filepath.Join("/var/run/netns", name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// NewTopology makes the node namespace and n pods 10.250.0.11, .12, ...
func NewTopology(t testing.TB, n int) *Topology {
	t.Helper()
	RequireRoot(t)
	id := randID()
	tp := &Topology{ID: id, Gateway: netip.MustParseAddr("10.250.0.1")}
	tp.Node = NewBridgeNode(t, "pt-pol-"+id+"-n", "10.250.0.1/24")
	for i := 0; i < n; i++ {
		name := string(rune('a' + i))
		p := &Pod{
			Name:     name,
			NS:       NewNS(t, "pt-pol-"+id+"-"+name),
			IP:       netip.AddrFrom4([4]byte{10, 250, 0, byte(11 + i)}),
			HostVeth: "pt" + id + name,
		}
		if err := tp.addPod(p); err != nil {
			t.Fatalf("pod %s: %v", name, err)
		}
		tp.Pods = append(tp.Pods, p)
	}
	return tp
}

func (tp *Topology) addPod(p *Pod) error {
	err := tp.Node.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.HostVeth}, PeerName: "tmp" + tp.ID + p.Name}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		br, err := netlink.LinkByName("br0")
		if err != nil {
			return err
		}
		host, err := netlink.LinkByName(p.HostVeth)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(host, br); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(host); err != nil {
			return err
		}
		peer, err := netlink.LinkByName("tmp" + tp.ID + p.Name)
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(peer, int(p.NS.Fd()))
	})
	if err != nil {
		return err
	}
	return p.NS.Do(func(ns.NetNS) error {
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		l, err := netlink.LinkByName("tmp" + tp.ID + p.Name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetName(l, "eth0"); err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(p.IP.String() + "/24")
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(tp.Gateway.String()), LinkIndex: l.Attrs().Index})
	})
}

// NodeSysctl writes a sysctl inside the node namespace (ip_forward, bridge netfilter).
func (tp *Topology) NodeSysctl(t testing.TB, key, value string) {
	t.Helper()
	err := tp.Node.Do(func(ns.NetNS) error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
	if err != nil {
		t.Fatalf("sysctl %s in node netns: %v", key, err)
	}
}

// ServeTCP runs a TCP echo server in the pod on port; closed at cleanup.
func (p *Pod) ServeTCP(t testing.TB, port int) {
	t.Helper()
	var l net.Listener
	err := p.NS.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp4", net.JoinHostPort(p.IP.String(), strconv.Itoa(port)))
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
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
}

// ServeUDP runs a UDP echo server in the pod on port.
func (p *Pod) ServeUDP(t testing.TB, port int) {
	t.Helper()
	var c net.PacketConn
	err := p.NS.Do(func(ns.NetNS) error {
		var err error
		c, err = net.ListenPacket("udp4", net.JoinHostPort(p.IP.String(), strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, a, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteTo(buf[:n], a)
		}
	}()
}

// DialTCP opens a TCP connection from the pod (the socket lives in its namespace).
func (p *Pod) DialTCP(addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := p.NS.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp4", addr.String())
		return err
	})
	return c, err
}

// TCP reports whether a TCP connection to addr works end to end (connect + echo).
func (p *Pod) TCP(addr netip.AddrPort) bool {
	c, err := p.DialTCP(addr, 400*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(400 * time.Millisecond))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	return err == nil && string(buf) == "ping"
}

// UDP reports whether a datagram to addr is echoed back.
func (p *Pod) UDP(addr netip.AddrPort) bool {
	var c net.Conn
	err := p.NS.Do(func(ns.NetNS) error {
		var err error
		c, err = net.Dial("udp4", addr.String())
		return err
	})
	if err != nil {
		return false
	}
	defer c.Close()
	buf := make([]byte, 16)
	for i := 0; i < 2; i++ {
		_ = c.SetDeadline(time.Now().Add(250 * time.Millisecond))
		if _, err := c.Write([]byte("ping")); err != nil {
			return false
		}
		if n, err := c.Read(buf); err == nil && string(buf[:n]) == "ping" {
			return true
		}
	}
	return false
}

// SCTPDelivered sends a crafted SCTP packet (INIT chunk) from src to dst:port on a raw
// socket and reports whether dst's eth0 saw it on a packet socket. The kernel here has
// no SCTP sockets, but raw IP sockets carry any protocol.
func SCTPDelivered(src, dst *Pod, port uint16) (bool, error) {
	var pfd int
	err := dst.NS.Do(func(ns.NetNS) error {
		var err error
		pfd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_IP)))
		if err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return unix.Bind(pfd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: l.Attrs().Index})
	})
	if err != nil {
		return false, fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(pfd)
	// A source port from a wide range: a probe that reuses an earlier probe's port between
	// the same pods matches that probe's conntrack entry and passes a policy that denies a
	// new association (with 200 possible ports, about 1 run in 100 of TestEBPFNetns).
	sport := randPort()
	pkt := make([]byte, 12+20)
	pkt[0], pkt[1] = byte(sport>>8), byte(sport)
	pkt[2], pkt[3] = byte(port>>8), byte(port)
	pkt[12] = 1 // INIT
	pkt[15] = 20
	err = src.NS.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_SCTP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst.IP.As4()})
	})
	if err != nil {
		return false, fmt.Errorf("raw send: %w", err)
	}
	deadline := time.Now().Add(400 * time.Millisecond)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		tv := unix.NsecToTimeval(int64(time.Until(deadline)))
		if tv.Sec == 0 && tv.Usec == 0 {
			break
		}
		_ = unix.SetsockoptTimeval(pfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, _, err := unix.Recvfrom(pfd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return false, err
		}
		if n < 24 || buf[9] != unix.IPPROTO_SCTP {
			continue
		}
		ihl := int(buf[0]&0xf) * 4
		if n >= ihl+4 && uint16(buf[ihl])<<8|uint16(buf[ihl+1]) == sport && uint16(buf[ihl+2])<<8|uint16(buf[ihl+3]) == port {
			return true, nil
		}
	}
	return false, nil
}

// randPort is a random port in 1024..65023.
func randPort() uint16 {
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return 1024 + (uint16(b[0])<<8|uint16(b[1]))%64000
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// AddrPort of a pod's IP and a port.
func (p *Pod) AddrPort(port uint16) netip.AddrPort { return netip.AddrPortFrom(p.IP, port) }

// BPFFS mounts a private bpffs on a temporary directory, unmounted at cleanup (which
// also releases everything pinned there).
func BPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mounting bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// Probe is one expected verdict: pod From reaches pod To on Proto ("tcp", "udp",
// "sctp") port Port, or not.
type Probe struct {
	From, To int
	Proto    string
	Port     uint16
	Want     bool
}

// ServeAll starts TCP echo servers on 8080 and 9090 and a UDP echo server on 5353 in
// every pod.
func (tp *Topology) ServeAll(t testing.TB) {
	for _, p := range tp.Pods {
		p.ServeTCP(t, 8080)
		p.ServeTCP(t, 9090)
		p.ServeUDP(t, 5353)
	}
}

// Check runs the probes and reports every mismatch.
func (tp *Topology) Check(t testing.TB, stage string, probes []Probe) {
	t.Helper()
	for _, p := range probes {
		src, dst := tp.Pods[p.From], tp.Pods[p.To]
		var got bool
		// An expected success gets three tries (a first SYN or datagram may be lost
		// while a fresh link settles); an expected failure is one short try, and any
		// success fails the test.
		tries := 1
		if p.Want {
			tries = 3
		}
		for i := 0; i < tries && !got; i++ {
			switch p.Proto {
			case "tcp":
				got = src.TCP(dst.AddrPort(p.Port))
			case "udp":
				got = src.UDP(dst.AddrPort(p.Port))
			case "sctp":
				var err error
				got, err = SCTPDelivered(src, dst, p.Port)
				if err != nil {
					t.Fatalf("%s: sctp probe: %v", stage, err)
				}
			default:
				t.Fatalf("unknown probe protocol %q", p.Proto)
			}
		}
		if got != p.Want {
			t.Errorf("%s: %s -> %s %s/%d: got allowed=%v, want %v", stage, src.Name, dst.Name, p.Proto, p.Port, got, p.Want)
		}
	}
}

// NewBridgeNode makes a node namespace with lo up and bridge br0 up on addr (the pods'
// gateway, CIDR form).
func NewBridgeNode(t testing.TB, name, addr string) ns.NetNS {
	t.Helper()
	n := NewNS(t, name)
	err := n.Do(func(ns.NetNS) error {
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("bridge: %w", err)
		}
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(br, a); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

package wg

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
)

// Two namespaces joined by a veth (192.0.2.1 ↔ 192.0.2.2), a userspace WireGuard device in
// each (10.99.0.1 ↔ 10.99.0.2 inside the tunnel).
func TestUserspaceTunnel(t *testing.T) {
	enforcetest.RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	names := [2]string{"pt-wg-" + id + "-a", "pt-wg-" + id + "-b"}
	nss := [2]ns.NetNS{enforcetest.NewNS(t, names[0]), enforcetest.NewNS(t, names[1])}
	err := nss[0].Do(func(ns.NetNS) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0"}, PeerName: "ul1", PeerNamespace: netlink.NsFd(int(nss[1].Fd()))}
		return netlink.LinkAdd(v)
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range nss {
		err := n.Do(func(ns.NetNS) error {
			for _, name := range []string{"lo", fmt.Sprintf("ul%d", i)} {
				l, err := netlink.LinkByName(name)
				if err != nil {
					return err
				}
				if name != "lo" {
					a, _ := netlink.ParseAddr(fmt.Sprintf("192.0.2.%d/24", i+1))
					if err := netlink.AddrAdd(l, a); err != nil {
						return err
					}
				}
				if err := netlink.LinkSetUp(l); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var keys [2]wgtypes.Key
	var devs [2]Device
	for i := range nss {
		keys[i], _ = wgtypes.GeneratePrivateKey()
		d, err := Open(Options{NetNS: nss[i].Path(), Mode: ModeUserspace}, Spec{Name: "wg-test", ListenPort: DefaultPort, PrivateKey: keys[i]})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		devs[i] = d
		err = nss[i].Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName("wg-test")
			if err != nil {
				return err
			}
			if l.Attrs().MTU != DefaultMTU {
				return fmt.Errorf("MTU %d, want %d", l.Attrs().MTU, DefaultMTU)
			}
			a, _ := netlink.ParseAddr(fmt.Sprintf("10.99.0.%d/24", i+1))
			return netlink.AddrAdd(l, a)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	peerOf := func(i int) []Peer {
		o := 1 - i
		return []Peer{{PublicKey: keys[o].PublicKey(), Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(o + 1)}), DefaultPort),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, 0, byte(o + 1)}), 32)}}}
	}
	for i := range devs {
		ch, err := devs[i].Configure(peerOf(i))
		if err != nil {
			t.Fatal(err)
		}
		if len(ch.Added) != 1 {
			t.Fatalf("first Configure: %+v", ch)
		}
	}
	ping(t, names[0], "10.99.0.2")
	ping(t, names[1], "10.99.0.1")

	st, _ := devs[0].State()
	hs := st.Peers[0].LastHandshakeTime
	if hs.IsZero() {
		t.Fatal("no handshake after ping")
	}
	applies := devs[0].Applies()
	ch, err := devs[0].Configure(peerOf(0))
	if err != nil || !ch.Empty() {
		t.Fatalf("second Configure with the same peers: %+v, %v", ch, err)
	}
	if devs[0].Applies() != applies {
		t.Fatal("the same desired state was applied again")
	}
	st, _ = devs[0].State()
	if !st.Peers[0].LastHandshakeTime.Equal(hs) {
		t.Fatal("handshake reset by an idempotent Configure")
	}
	// The same Ensure is a no-op; a port change is applied.
	if err := devs[0].Ensure(Spec{Name: "wg-test", ListenPort: DefaultPort, PrivateKey: keys[0]}); err != nil || devs[0].Applies() != applies {
		t.Fatalf("idempotent Ensure: applies %d→%d, %v", applies, devs[0].Applies(), err)
	}
	ch, err = devs[0].Configure(nil)
	if err != nil || len(ch.Removed) != 1 {
		t.Fatalf("removing the peer: %+v, %v", ch, err)
	}
	if out, err := exec.Command("ip", "netns", "exec", names[0], "ping", "-c1", "-W1", "10.99.0.2").CombinedOutput(); err == nil {
		t.Fatalf("ping succeeded without a peer:\n%s", out)
	}
}

func ping(t *testing.T, netns, dst string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "exec", netns, "ping", "-c1", "-W1", dst).CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping %s from %s: %v\n%s", dst, netns, err, out)
		}
	}
}

func TestMSSClamp(t *testing.T) {
	enforcetest.RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "pt-wgm-" + hex.EncodeToString(b)
	n := enforcetest.NewNS(t, name)
	list := func() string {
		out, err := exec.Command("ip", "netns", "exec", name, "nft", "-a", "list", "chain", "inet", MSSTable, MSSChain).CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v\n%s", err, out)
		}
		return string(out)
	}
	if err := EnsureMSSClamp(n.Path(), []string{"wg-b", "wg-a"}); err != nil {
		t.Fatal(err)
	}
	out := list()
	for _, want := range []string{`oifname "wg-a"`, `oifname "wg-b"`, "tcp option maxseg size set rt mtu", "hook forward priority mangle"} {
		if !strings.Contains(out, want) {
			t.Fatalf("chain lacks %q:\n%s", want, out)
		}
	}
	// Unchanged: no write (the rule handles stay the same).
	if err := EnsureMSSClamp(n.Path(), []string{"wg-a", "wg-b"}); err != nil || list() != out {
		t.Fatalf("second Ensure rewrote the chain (%v):\n%s", err, list())
	}
	if err := EnsureMSSClamp(n.Path(), []string{"wg-a"}); err != nil {
		t.Fatal(err)
	}
	if out := list(); strings.Contains(out, "wg-b") || !strings.Contains(out, "wg-a") {
		t.Fatalf("after removing wg-b:\n%s", out)
	}
}

// Without a wireguard kernel module (this machine), ModeKernel fails with
// ErrNoKernelModule and ModeAuto falls back to the userspace implementation; with one,
// both give a kernel device.
func TestModeDetection(t *testing.T) {
	enforcetest.RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	n := enforcetest.NewNS(t, "pt-wgd-"+hex.EncodeToString(b))
	key, _ := wgtypes.GeneratePrivateKey()
	spec := Spec{Name: "wg-detect", ListenPort: 51999, PrivateKey: key}
	_, kerr := Open(Options{NetNS: n.Path(), Mode: ModeKernel}, spec)
	d, err := Open(Options{NetNS: n.Path()}, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st, err := d.State()
	if err != nil {
		t.Fatal(err)
	}
	if kerr != nil {
		if !errors.Is(kerr, ErrNoKernelModule) {
			t.Fatalf("ModeKernel without a module: %v, want ErrNoKernelModule", kerr)
		}
		if st.Type != wgtypes.Userspace {
			t.Fatalf("auto mode without a kernel module gave a %v device", st.Type)
		}
	} else if st.Type != wgtypes.LinuxKernel {
		t.Fatalf("auto mode with a kernel module gave a %v device", st.Type)
	}
	if st.PublicKey != key.PublicKey() || st.ListenPort != 51999 {
		t.Fatalf("state %+v", st)
	}
	t.Logf("kernel mode: %v; auto mode chose %v", kerr, st.Type)
}

// The MTU of a device in another namespace is read and changed there.
func TestMTUInNamespace(t *testing.T) {
	enforcetest.RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	n := enforcetest.NewNS(t, "pt-wgu-"+hex.EncodeToString(b))
	key, _ := wgtypes.GeneratePrivateKey()
	d, err := Open(Options{NetNS: n.Path(), Mode: ModeUserspace}, Spec{Name: "wg-mtu", ListenPort: 51998, PrivateKey: key, MTU: 9000 - Overhead})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	mtu := func() int {
		var m int
		_ = n.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName("wg-mtu")
			if err == nil {
				m = l.Attrs().MTU
			}
			return err
		})
		return m
	}
	if got := mtu(); got != 9000-Overhead {
		t.Fatalf("MTU %d, want %d", got, 9000-Overhead)
	}
	if m, err := d.(*userspace).tun.MTU(); err != nil || m != 9000-Overhead {
		t.Fatalf("the device reads MTU %d, %v", m, err)
	}
	if err := d.Ensure(Spec{Name: "wg-mtu", ListenPort: 51998, PrivateKey: key, MTU: 1400}); err != nil {
		t.Fatal(err)
	}
	if got := mtu(); got != 1400 {
		t.Fatalf("MTU after Ensure %d, want 1400", got)
	}
}

package link

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

func TestHostVethName(t *testing.T) {
	a, b := HostVethName("c1", "eth0"), HostVethName("c1", "eth1")
	if a == b || a != HostVethName("c1", "eth0") {
		t.Fatalf("names must be deterministic and differ per ifname: %s %s", a, b)
	}
	// "c1"+"eth0" must not collide with "c1e"+"th0".
	if HostVethName("c1e", "th0") == a {
		t.Fatal("separator missing")
	}
	for _, n := range []string{a, b, HostVethName(strings.Repeat("x", 64), "net1")} {
		if len(n) != 12 || len(n) > 15 || !IsHostVethName(n) {
			t.Fatalf("%q is not a valid host veth name", n)
		}
	}
	for _, n := range []string{"eth0", "ptxyz0123456", "pt0123", "cni-bridge0"} {
		if IsHostVethName(n) {
			t.Fatalf("%q must not look like ours", n)
		}
	}
}

func newTestNS(t *testing.T) ns.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces (CI runs it as root)")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); testutils.UnmountNS(n) })
	return n
}

// TestNetlinkPodLifecycle drives every Kernel method against real namespaces: a node
// namespace (where the calls run) and a pod namespace.
func TestNetlinkPodLifecycle(t *testing.T) {
	node, pod := newTestNS(t), newTestNS(t)
	k := Netlink{}
	gw := netip.MustParsePrefix("10.77.0.1/16")
	podAddr := netip.MustParsePrefix("10.77.1.5/16")
	routes := []Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: gw.Addr()}, {Dst: netip.MustParsePrefix("10.96.0.0/12"), GW: gw.Addr()}}
	host := HostVethName("ctr", "eth0")
	cfg := PodConfig{Netns: pod.Path(), IfName: "eth0", Addrs: []netip.Prefix{podAddr}, Routes: routes}
	err := node.Do(func(ns.NetNS) error {
		for i := range 2 { // idempotent
			br, err := k.EnsureBridge(BridgeSpec{Name: "ptbr0", MTU: 1400, Addrs: []netip.Prefix{gw}})
			if err != nil {
				return fmt.Errorf("EnsureBridge #%d: %w", i, err)
			}
			if br.Index == 0 {
				return errors.New("bridge without index")
			}
		}
		if a, err := k.Addrs("ptbr0"); err != nil || len(a) != 1 || a[0] != gw {
			return fmt.Errorf("bridge addresses %v, %v", a, err)
		}
		h, p, err := k.AddVeth(VethSpec{HostName: host, PodIfName: "eth0", PodNetns: pod.Path(), Bridge: "ptbr0", MTU: 1400})
		if err != nil {
			return err
		}
		br, _ := k.LinkByName("ptbr0")
		if h.Master != br.Index || p.Name != "eth0" || p.MTU != 1400 || h.MTU != 1400 {
			return fmt.Errorf("veth host %+v pod %+v bridge %+v", h, p, br)
		}
		if err := k.ConfigurePod(cfg); err != nil {
			return err
		}
		if err := k.ConfigurePod(cfg); err != nil {
			return fmt.Errorf("ConfigurePod twice: %w", err)
		}
		if err := k.CheckPod(cfg); err != nil {
			return err
		}
		// A second pod interface with the same name is refused.
		if _, _, err := k.AddVeth(VethSpec{HostName: HostVethName("other", "eth0"), PodIfName: "eth0", PodNetns: pod.Path(), Bridge: "ptbr0"}); err == nil || !strings.Contains(err.Error(), "already exists") {
			return fmt.Errorf("duplicate pod ifname: %v", err)
		}
		if vs, err := k.HostVeths(); err != nil || len(vs) != 1 || vs[0].Name != host {
			return fmt.Errorf("HostVeths %v, %v", vs, err)
		}
		missing := cfg
		missing.Routes = append(missing.Routes, Route{Dst: netip.MustParsePrefix("10.200.0.0/16")})
		if err := k.CheckPod(missing); err == nil || !strings.Contains(err.Error(), "10.200.0.0/16") {
			return fmt.Errorf("CheckPod with a route that is not there: %v", err)
		}
		if err := k.EnableForwarding(true, false); err != nil {
			return err
		}
		if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(b)) != "1" {
			return errors.New("forwarding not on in the node namespace")
		}
		for range 2 {
			if err := k.DeleteLink(host); err != nil {
				return err
			}
		}
		if _, err := k.LinkByName(host); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("after delete: %v", err)
		}
		if err := k.CheckPod(cfg); err == nil {
			return errors.New("CheckPod passes after the veth is gone")
		}
		if err := k.DeletePodLink(pod.Path(), "eth0"); err != nil {
			return err
		}
		return k.DeletePodLink("/var/run/netns/pt-does-not-exist", "eth0")
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestNetlinkAddVethReplacesLeftover: an ADD retried after a crash finds its host veth
// name taken by the previous attempt's leftover and replaces it.
func TestNetlinkAddVethReplacesLeftover(t *testing.T) {
	node, pod := newTestNS(t), newTestNS(t)
	k := Netlink{}
	host := HostVethName("retried", "eth0")
	err := node.Do(func(ns.NetNS) error {
		if _, err := k.EnsureBridge(BridgeSpec{Name: "ptbr1"}); err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: "leftover"}); err != nil {
			return err
		}
		h, p, err := k.AddVeth(VethSpec{HostName: host, PodIfName: "eth0", PodNetns: pod.Path(), Bridge: "ptbr1"})
		if err != nil {
			return fmt.Errorf("AddVeth over a leftover: %w", err)
		}
		if h.Master == 0 || p.Name != "eth0" {
			return fmt.Errorf("host %+v pod %+v", h, p)
		}
		if l, err := netlink.LinkByName(host); err != nil || l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("host veth not up: %v", err)
		}
		if _, err := netlink.LinkByName("leftover"); err == nil {
			return errors.New("the leftover's peer survived")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestBridgeMACStable: removing the pod whose veth has the lowest MAC must not change the
// bridge's MAC (the other pods cache it as their gateway's).
func TestBridgeMACStable(t *testing.T) {
	node, podA, podB := newTestNS(t), newTestNS(t), newTestNS(t)
	k := Netlink{}
	err := node.Do(func(ns.NetNS) error {
		if _, err := k.EnsureBridge(BridgeSpec{Name: "ptbr1", Addrs: []netip.Prefix{netip.MustParsePrefix("10.78.0.1/24")}}); err != nil {
			return err
		}
		var hosts []string
		for i, p := range []ns.NetNS{podA, podB} {
			h := HostVethName(fmt.Sprintf("ctr%d", i), "eth0")
			if _, _, err := k.AddVeth(VethSpec{HostName: h, PodIfName: "eth0", PodNetns: p.Path(), Bridge: "ptbr1"}); err != nil {
				return err
			}
			hosts = append(hosts, h)
		}
		before, err := netlink.LinkByName("ptbr1")
		if err != nil {
			return err
		}
		// Remove the port whose MAC an unpinned bridge would have borrowed first.
		if a, b := mustMAC(hosts[0]), mustMAC(hosts[1]); b < a {
			hosts[0], hosts[1] = hosts[1], hosts[0]
		}
		for _, h := range hosts[:1] {
			if err := k.DeleteLink(h); err != nil {
				return err
			}
			after, err := netlink.LinkByName("ptbr1")
			if err != nil {
				return err
			}
			if after.Attrs().HardwareAddr.String() != before.Attrs().HardwareAddr.String() {
				return fmt.Errorf("bridge MAC changed from %s to %s when %s was removed", before.Attrs().HardwareAddr, after.Attrs().HardwareAddr, h)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func mustMAC(name string) string {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return ""
	}
	return string(l.Attrs().HardwareAddr)
}

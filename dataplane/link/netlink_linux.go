package link

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Netlink is the real Kernel: node-side calls use the process's own namespace, pod-side
// calls use a netlink handle opened inside the pod namespace.
type Netlink struct{}

var _ Kernel = Netlink{}

// maxDumpAttempts bounds retries of a netlink dump the kernel interrupted because the
// table changed under it (NLM_F_DUMP_INTR): with 50 pods starting at once it does.
const maxDumpAttempts = 10

func retryDump[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for range maxDumpAttempts {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

func toLink(l netlink.Link) Link {
	a := l.Attrs()
	return Link{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr.String(), MTU: a.MTU, Master: a.MasterIndex}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// EnsureBridge implements Kernel.
func (Netlink) EnsureBridge(s BridgeSpec) (Link, error) {
	l, err := netlink.LinkByName(s.Name)
	if isNotFound(err) {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: s.Name, MTU: s.MTU, TxQLen: -1}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return Link{}, fmt.Errorf("create bridge %s: %w", s.Name, err)
		}
		l, err = netlink.LinkByName(s.Name)
		if err == nil {
			// A bridge without an assigned MAC borrows the lowest MAC of its ports and
			// changes it when that port goes away: every other pod's cached gateway MAC is
			// then wrong for seconds. Setting it (even to its current value) pins it.
			err = netlink.LinkSetHardwareAddr(l, l.Attrs().HardwareAddr)
		}
	}
	if err != nil {
		return Link{}, fmt.Errorf("look up bridge %s: %w", s.Name, err)
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return Link{}, fmt.Errorf("%s exists and is a %s, not a bridge: remove it or choose another \"bridge\" name", s.Name, l.Type())
	}
	have, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return Link{}, fmt.Errorf("list addresses of bridge %s: %w", s.Name, err)
	}
	for _, want := range s.Addrs {
		if hasAddr(have, want) {
			continue
		}
		a := &netlink.Addr{IPNet: ipNet(want)}
		if want.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return Link{}, fmt.Errorf("add gateway address %s to bridge %s: %w", want, s.Name, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return Link{}, fmt.Errorf("set bridge %s up: %w", s.Name, err)
		}
	}
	return toLink(l), nil
}

func hasAddr(have []netlink.Addr, want netip.Prefix) bool {
	for _, h := range have {
		if p, ok := prefixOf(h.IPNet); ok && p == want {
			return true
		}
	}
	return false
}

// podHandle opens a netlink handle inside the namespace at path.
func podHandle(path string) (*netlink.Handle, error) {
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("network namespace %s: %w", path, ErrNotFound)
		}
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		// A file that is not (any more) a namespace, e.g. an unmounted bind mount.
		if errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("%s is not a network namespace: %w", path, ErrNotFound)
		}
		return nil, fmt.Errorf("netlink in namespace %s: %w", path, err)
	}
	return h, nil
}

// AddVeth implements Kernel.
func (Netlink) AddVeth(s VethSpec) (Link, Link, error) {
	nsh, err := netns.GetFromPath(s.PodNetns)
	if err != nil {
		return Link{}, Link{}, fmt.Errorf("open pod network namespace %s: %w", s.PodNetns, err)
	}
	defer nsh.Close()
	master := s.BridgeIndex
	if master == 0 {
		br, err := netlink.LinkByName(s.Bridge)
		if err != nil {
			return Link{}, Link{}, fmt.Errorf("look up bridge %s: %w", s.Bridge, err)
		}
		master = br.Attrs().Index
	}
	newVeth := func() *netlink.Veth {
		return &netlink.Veth{
			// Created up and attached: no extra round trips on the pod start path.
			LinkAttrs:     netlink.LinkAttrs{Name: s.HostName, MTU: s.MTU, MasterIndex: master, TxQLen: -1, Flags: net.FlagUp},
			PeerName:      s.PodIfName,
			PeerNamespace: netlink.NsFd(int(nsh)),
			PeerMTU:       uint32(max(s.MTU, 0)),
		}
	}
	err = netlink.LinkAdd(newVeth())
	if errors.Is(err, unix.EEXIST) {
		// A leftover host end of the same name (an ADD retried after a crash) is
		// replaced; if that was not the clash, the pod already has the interface.
		if old, lerr := netlink.LinkByName(s.HostName); lerr == nil {
			if derr := netlink.LinkDel(old); derr != nil && !isNotFound(derr) {
				return Link{}, Link{}, fmt.Errorf("remove leftover veth %s: %w", s.HostName, derr)
			}
			err = netlink.LinkAdd(newVeth())
		}
	}
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return Link{}, Link{}, fmt.Errorf("create veth %s/%s: an interface named %s already exists in the pod namespace %s: %w",
				s.HostName, s.PodIfName, s.PodIfName, s.PodNetns, err)
		}
		return Link{}, Link{}, fmt.Errorf("create veth %s with peer %s in %s: %w", s.HostName, s.PodIfName, s.PodNetns, err)
	}
	host, err := netlink.LinkByName(s.HostName)
	if err != nil {
		return Link{}, Link{}, fmt.Errorf("look up new veth %s: %w", s.HostName, err)
	}
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return Link{}, Link{}, fmt.Errorf("netlink in namespace %s: %w", s.PodNetns, err)
	}
	defer h.Close()
	pod, err := h.LinkByName(s.PodIfName)
	if err != nil {
		return Link{}, Link{}, fmt.Errorf("look up %s in %s: %w", s.PodIfName, s.PodNetns, err)
	}
	return toLink(host), toLink(pod), nil
}

// ConfigurePod implements Kernel.
func (Netlink) ConfigurePod(c PodConfig) error {
	h, err := podHandle(c.Netns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(c.IfName)
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", c.IfName, c.Netns, err)
	}
	for _, p := range c.Addrs {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD // usable at once: the pod starts immediately
		}
		if err := h.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s to %s in %s: %w", p, c.IfName, c.Netns, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in %s: %w", c.IfName, c.Netns, err)
	}
	for _, r := range c.Routes {
		nr := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(r.Dst)}
		if r.GW.IsValid() {
			nr.Gw = r.GW.AsSlice()
		} else {
			nr.Scope = netlink.SCOPE_LINK
		}
		if err := h.RouteAdd(nr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s via %s to %s in %s: %w", r.Dst, r.GW, c.IfName, c.Netns, err)
		}
	}
	return nil
}

// CheckPod implements Kernel.
func (Netlink) CheckPod(c PodConfig) error {
	h, err := podHandle(c.Netns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(c.IfName)
	if err != nil {
		return fmt.Errorf("interface %s in %s: %w", c.IfName, c.Netns, err)
	}
	if _, ok := l.(*netlink.Veth); !ok {
		return fmt.Errorf("interface %s in %s is a %s, not a veth", c.IfName, c.Netns, l.Type())
	}
	if c.HostIndex != 0 && l.Attrs().ParentIndex != c.HostIndex {
		return fmt.Errorf("interface %s in %s is not the peer of the host veth (peer ifindex %d, host veth %d)", c.IfName, c.Netns, l.Attrs().ParentIndex, c.HostIndex)
	}
	if c.MTU != 0 && l.Attrs().MTU != c.MTU {
		return fmt.Errorf("interface %s in %s has mtu %d, the network configures %d", c.IfName, c.Netns, l.Attrs().MTU, c.MTU)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses of %s in %s: %w", c.IfName, c.Netns, err)
	}
	for _, want := range c.Addrs {
		if !hasAddr(addrs, want) {
			return fmt.Errorf("address %s is missing on %s in %s", want, c.IfName, c.Netns)
		}
	}
	routes, err := retryDump(func() ([]netlink.Route, error) { return h.RouteList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list routes of %s in %s: %w", c.IfName, c.Netns, err)
	}
	for _, want := range c.Routes {
		if !hasRoute(routes, want) {
			via := ""
			if want.GW.IsValid() {
				via = " via " + want.GW.String()
			}
			return fmt.Errorf("route %s%s is missing on %s in %s", want.Dst, via, c.IfName, c.Netns)
		}
	}
	return nil
}

func hasRoute(have []netlink.Route, want Route) bool {
	for _, r := range have {
		dst, ok := prefixOf(r.Dst)
		if !ok { // the kernel reports a default route without a destination
			bits := 32
			if r.Family == unix.AF_INET6 {
				bits = 128
			}
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			if bits == 32 {
				dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			}
		}
		if dst != want.Dst.Masked() {
			continue
		}
		if !want.GW.IsValid() {
			return true
		}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok && gw.Unmap() == want.GW {
			return true
		}
	}
	return false
}

// DeleteLink implements Kernel.
func (Netlink) DeleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// DeletePodLink implements Kernel.
func (Netlink) DeletePodLink(netnsPath, ifname string) error {
	if netnsPath == "" {
		return nil
	}
	h, err := podHandle(netnsPath)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", ifname, netnsPath, err)
	}
	if err := h.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s in %s: %w", ifname, netnsPath, err)
	}
	return nil
}

// LinkByName implements Kernel.
func (Netlink) LinkByName(name string) (Link, error) {
	l, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return Link{}, fmt.Errorf("link %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return Link{}, fmt.Errorf("look up %s: %w", name, err)
	}
	return toLink(l), nil
}

// HostVeths implements Kernel.
func (Netlink) HostVeths() ([]Link, error) {
	ls, err := retryDump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []Link
	for _, l := range ls {
		if _, ok := l.(*netlink.Veth); ok && IsHostVethName(l.Attrs().Name) {
			out = append(out, toLink(l))
		}
	}
	return out, nil
}

// EnableForwarding implements Kernel. /proc/sys/net is per network namespace: these
// writes affect the namespace the calling process runs in (the node), never a pod's.
func (Netlink) EnableForwarding(v4, v6 bool) error {
	if v4 {
		if err := echo1("/proc/sys/net/ipv4/ip_forward"); err != nil {
			return err
		}
	}
	if v6 {
		if err := echo1("/proc/sys/net/ipv6/conf/all/forwarding"); err != nil {
			return err
		}
	}
	return nil
}

func echo1(path string) error {
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil // already on: skip the write (and its lock) on every ADD
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable forwarding (%s): %w", path, err)
	}
	return nil
}

// Addrs returns the global-scope addresses of a node-side link (what `patronus status`
// shows for the bridge).
func (Netlink) Addrs(name string) ([]netip.Prefix, error) {
	l, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil, fmt.Errorf("link %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	as, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", name, err)
	}
	var out []netip.Prefix
	for _, a := range as {
		if p, ok := prefixOf(a.IPNet); ok && a.Scope == int(netlink.SCOPE_UNIVERSE) {
			out = append(out, p)
		}
	}
	return out, nil
}

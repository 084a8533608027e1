package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkKernel is the real Kernel for one network namespace.
type NetlinkKernel struct {
	h    *netlink.Handle
	nsh  netns.NsHandle // -1 for the caller's namespace
	path string
}

// NewNetlinkKernel opens a netlink handle in the namespace at nsPath ("" = the caller's).
func NewNetlinkKernel(nsPath string) (*NetlinkKernel, error) {
	k := &NetlinkKernel{nsh: -1, path: nsPath}
	var err error
	if nsPath == "" {
		k.h, err = netlink.NewHandle()
	} else {
		if k.nsh, err = netns.GetFromPath(nsPath); err != nil {
			return nil, fmt.Errorf("route: netns %s: %w", nsPath, err)
		}
		k.h, err = netlink.NewHandleAt(k.nsh)
	}
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("route: netlink: %w", err)
	}
	return k, nil
}

// Close releases the handle.
func (k *NetlinkKernel) Close() {
	if k.h != nil {
		k.h.Close()
	}
	if k.nsh >= 0 {
		k.nsh.Close()
	}
}

// dumpRetries bounds retries of a dump the kernel interrupted (the table changed while
// it was being read: the partial result must not be acted on).
const dumpRetries = 10

func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpRetries {
		var out []T
		out, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, fmt.Errorf("route: dump interrupted %d times: %w", dumpRetries, err)
}

// Routes lists the routes carrying Protocol in every table, both families.
func (k *NetlinkKernel) Routes() ([]Route, error) {
	rs, err := retryDump(func() ([]netlink.Route, error) {
		return k.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: Protocol, Table: unix.RT_TABLE_UNSPEC},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("route: list routes: %w", err)
	}
	names := map[int]string{}
	out := make([]Route, 0, len(rs))
	for _, r := range rs {
		if r.Dst == nil {
			continue // a default route: never installed by Patronus
		}
		name, ok := names[r.LinkIndex]
		if !ok {
			if l, err := k.h.LinkByIndex(r.LinkIndex); err == nil {
				name = l.Attrs().Name
			}
			names[r.LinkIndex] = name
		}
		rt := Route{Dst: ipnetPrefix(r.Dst), Dev: name, Table: r.Table, MTU: r.MTU}
		rt.Via, _ = netip.AddrFromSlice(r.Gw)
		rt.Via = rt.Via.Unmap()
		rt.Src, _ = netip.AddrFromSlice(r.Src)
		rt.Src = rt.Src.Unmap()
		out = append(out, rt)
	}
	return out, nil
}

func (k *NetlinkKernel) toNetlink(r Route) (*netlink.Route, error) {
	nr := &netlink.Route{Dst: prefixIPNet(r.Dst), Table: r.table(), Protocol: Protocol, MTU: r.MTU}
	if r.Dev != "" {
		l, err := k.h.LinkByName(r.Dev)
		if err != nil {
			return nil, fmt.Errorf("link %s: %w", r.Dev, err)
		}
		nr.LinkIndex = l.Attrs().Index
	}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.Src.IsValid() {
		nr.Src = r.Src.AsSlice()
	}
	return nr, nil
}

// AddRoute adds or replaces r.
func (k *NetlinkKernel) AddRoute(r Route) error {
	nr, err := k.toNetlink(r)
	if err != nil {
		return err
	}
	return k.h.RouteReplace(nr)
}

// DelRoute deletes r (already gone is not an error).
func (k *NetlinkKernel) DelRoute(r Route) error {
	// Scope "nowhere" is the kernel's wildcard for deletion (as `ip route del` sends);
	// the default, universe, would not match an on-link route.
	nr := &netlink.Route{Dst: prefixIPNet(r.Dst), Table: r.table(), Protocol: Protocol, Scope: netlink.SCOPE_NOWHERE}
	if err := k.h.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// Rules lists the rules carrying Protocol.
func (k *NetlinkKernel) Rules() ([]Rule, error) {
	rs, err := retryDump(func() ([]netlink.Rule, error) { return k.h.RuleList(netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("route: list rules: %w", err)
	}
	var out []Rule
	for _, r := range rs {
		if r.Protocol != Protocol {
			continue
		}
		out = append(out, Rule{Priority: r.Priority, Src: ipnetPrefix(r.Src), Dst: ipnetPrefix(r.Dst), Table: r.Table})
	}
	return out, nil
}

func (k *NetlinkKernel) toRule(r Rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Priority, nr.Table, nr.Protocol = r.Priority, r.Table, Protocol
	nr.Family = unix.AF_INET
	for _, p := range []netip.Prefix{r.Src, r.Dst} {
		if p.IsValid() && p.Addr().Is6() {
			nr.Family = unix.AF_INET6
		}
	}
	nr.Src, nr.Dst = prefixIPNet(r.Src), prefixIPNet(r.Dst)
	return nr
}

// AddRule adds r.
func (k *NetlinkKernel) AddRule(r Rule) error { return k.h.RuleAdd(k.toRule(r)) }

// DelRule deletes r (already gone is not an error).
func (k *NetlinkKernel) DelRule(r Rule) error {
	if err := k.h.RuleDel(k.toRule(r)); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// Subscribe reports route deletions and link changes in the namespace on the returned
// channel (coalesced: one pending value at most) until done is closed.
func (k *NetlinkKernel) Subscribe(done <-chan struct{}) (<-chan struct{}, error) {
	out := make(chan struct{}, 1)
	notify := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	var nsp *netns.NsHandle
	if k.nsh >= 0 {
		nsp = &k.nsh
	}
	routes := make(chan netlink.RouteUpdate, 64)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: nsp}); err != nil {
		return nil, fmt.Errorf("route: subscribe to routes: %w", err)
	}
	links := make(chan netlink.LinkUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: nsp}); err != nil {
		return nil, fmt.Errorf("route: subscribe to links: %w", err)
	}
	go func() {
		for routes != nil || links != nil {
			select {
			case u, ok := <-routes:
				if !ok {
					routes = nil
					continue
				}
				if u.Type == unix.RTM_DELROUTE && u.Protocol == Protocol {
					notify()
				}
			case _, ok := <-links:
				if !ok {
					links = nil
					continue
				}
				notify() // a link (re)appearing may make a failed route installable
			}
		}
		close(out)
	}()
	return out, nil
}

func ipnetPrefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	bits, _ := n.Mask.Size()
	if a.Is4In6() && bits > 32 {
		bits -= 96
	}
	return netip.PrefixFrom(a.Unmap(), bits).Masked()
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	if !p.IsValid() {
		return nil
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

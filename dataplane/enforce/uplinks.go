package enforce

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// defaultUplinkResync is how long the route-uplink view is trusted without a full dump:
// a safety net for changes the kernel does not announce (IPv4 routes flushed with an
// address) and for any bug in following the notifications.
const defaultUplinkResync = time.Minute

// uplinkView is what linkRouteUplinks needs from the node namespace, the links and the
// devices of main-table unicast routes, kept current from rtnetlink notifications so
// that a Set where neither changed (most Sets: a pod added on the bridge, a policy
// edited) makes no netlink dump. The notifications are read without blocking at the
// start of each Set from a socket subscribed before the first dump: the kernel queues
// a notification before the change's requester gets its answer, so every change made
// before a Set starts is seen by that Set, as when every Set dumped.
//
// The view may hold route devices whose routes are gone when the kernel removed them
// without a notification; that can only attach to_net to a device with no route (as if
// its route were still there) and the periodic full dump corrects it.
type uplinkView struct {
	fd     int // subscribed rtnetlink socket; -1: none, dump on every refresh
	links  map[int]netlink.Link
	byName map[string]int
	// routeDevs: devices that main-table unicast routes (or their next hops) point at.
	routeDevs map[int]bool

	full        bool // links and routes must be dumped (start, lost notifications)
	routesDirty bool // routes must be dumped (a route gone, a device down)
	lastFull    time.Time
	resync      time.Duration
	now         func() time.Time

	// dumps counts link and route dumps (one per family), for tests and benchmarks.
	dumps int
	buf   []byte
}

// openUplinkView subscribes to link and route changes of the current namespace (call it
// in the node namespace). If that fails the view still works, dumping on every refresh.
func openUplinkView() (*uplinkView, error) {
	// The maps exist before the first dump: notifications queued between the subscription
	// and the first refresh are applied (drain) before that dump replaces them.
	v := &uplinkView{fd: -1, full: true, resync: defaultUplinkResync, now: time.Now,
		links: map[int]netlink.Link{}, byName: map[string]int{}, routeDevs: map[int]bool{}}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return v, fmt.Errorf("rtnetlink socket: %w", err)
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK,
		Groups: unix.RTMGRP_LINK | unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return v, fmt.Errorf("subscribing to link and route changes: %w", err)
	}
	// Room for a burst of pod creations between two Sets; an overflow costs one full
	// dump (ENOBUFS), not correctness.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	v.fd = fd
	v.buf = make([]byte, 64<<10)
	return v, nil
}

func (v *uplinkView) close() {
	if v.fd >= 0 {
		unix.Close(v.fd)
		v.fd = -1
	}
}

// refresh brings the view up to date: it applies the queued notifications and dumps
// what they cannot tell. Must run in the node namespace.
func (v *uplinkView) refresh() error {
	if v.fd >= 0 {
		v.drain()
	}
	if v.fd < 0 || v.full || v.now().Sub(v.lastFull) >= v.resync {
		return v.dumpAll()
	}
	if v.routesDirty {
		return v.dumpRoutes()
	}
	return nil
}

// drain reads every queued notification without blocking.
func (v *uplinkView) drain() {
	for {
		n, _, err := unix.Recvfrom(v.fd, v.buf, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			// Notifications were dropped: only a dump tells what changed.
			v.full = true
			continue
		case err != nil:
			v.full = true
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(v.buf[:n])
		if err != nil {
			v.full = true
			continue
		}
		for i := range msgs {
			if err := v.apply(&msgs[i]); err != nil {
				v.full = true
			}
		}
	}
}

// staticSkip: devices linkRouteUplinks never takes, whatever the endpoints (lo, bridge
// ports such as pod veths).
func staticSkip(l netlink.Link) bool {
	a := l.Attrs()
	return a.Flags&net.FlagLoopback != 0 || a.MasterIndex != 0
}

func (v *uplinkView) apply(m *syscall.NetlinkMessage) error {
	switch m.Header.Type {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		if len(m.Data) < unix.SizeofIfInfomsg {
			return errors.New("short link message")
		}
		ifi := nl.DeserializeIfInfomsg(m.Data)
		// The bridge's own notifications about its ports (AF_BRIDGE; a DELLINK there
		// means "left the bridge"): the AF_UNSPEC ones tell the same about the device.
		if ifi.Family == unix.AF_BRIDGE {
			return nil
		}
		idx := int(ifi.Index)
		if m.Header.Type == unix.RTM_DELLINK {
			v.removeLink(idx)
			return nil
		}
		hdr := unix.NlMsghdr(m.Header)
		l, err := netlink.LinkDeserialize(&hdr, m.Data)
		if err != nil {
			return err
		}
		old, had := v.links[idx]
		v.setLink(l)
		if v.routeDevs[idx] && !staticSkip(l) {
			// Routes of the device were not followed while it was a bridge port (see
			// RTM_DELROUTE), and IPv4 drops a device's routes silently when it goes down.
			if !had || staticSkip(old) || (old.Attrs().Flags&net.FlagUp != 0 && l.Attrs().Flags&net.FlagUp == 0) {
				v.routesDirty = true
			}
		}
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		oifs, ok, err := mainUnicastDevices(m.Data)
		if err != nil || !ok {
			return err
		}
		if m.Header.Type == unix.RTM_NEWROUTE {
			for _, i := range oifs {
				v.routeDevs[i] = true
			}
			// A replaced route may have left another device.
			if m.Header.Flags&unix.NLM_F_REPLACE != 0 {
				v.routesDirty = true
			}
			return nil
		}
		for _, i := range oifs {
			// Only a counted device can lose its last route. A bridge port's routes (a
			// pod veth's IPv6 link-local one) do not count while it is one (if it
			// leaves the bridge, RTM_NEWLINK asks for a dump); a deleted device's
			// routes went with it.
			l, ok := v.links[i]
			if !v.routeDevs[i] || !ok || staticSkip(l) {
				continue
			}
			v.routesDirty = true
		}
	}
	return nil
}

func (v *uplinkView) setLink(l netlink.Link) {
	a := l.Attrs()
	if old, ok := v.links[a.Index]; ok && v.byName[old.Attrs().Name] == a.Index {
		delete(v.byName, old.Attrs().Name)
	}
	v.links[a.Index] = l
	v.byName[a.Name] = a.Index
}

func (v *uplinkView) removeLink(idx int) {
	if old, ok := v.links[idx]; ok && v.byName[old.Attrs().Name] == idx {
		delete(v.byName, old.Attrs().Name)
	}
	delete(v.links, idx)
	delete(v.routeDevs, idx) // its routes went with it
}

// mainUnicastDevices returns the output devices of a route message when it is a
// unicast route of the main table (what linkRouteUplinks counts).
func mainUnicastDevices(b []byte) ([]int, bool, error) {
	if len(b) < unix.SizeofRtMsg {
		return nil, false, errors.New("short route message")
	}
	rtm := nl.DeserializeRtMsg(b)
	if (rtm.Family != unix.AF_INET && rtm.Family != unix.AF_INET6) || rtm.Type != unix.RTN_UNICAST {
		return nil, false, nil
	}
	attrs, err := nl.ParseRouteAttr(b[rtm.Len():])
	if err != nil {
		return nil, false, err
	}
	table := uint32(rtm.Table)
	var oif int
	var multipath []byte
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_TABLE:
			if len(a.Value) >= 4 {
				table = binary.NativeEndian.Uint32(a.Value)
			}
		case unix.RTA_OIF:
			if len(a.Value) >= 4 {
				oif = int(binary.NativeEndian.Uint32(a.Value))
			}
		case unix.RTA_MULTIPATH:
			multipath = a.Value
		}
	}
	if table != unix.RT_TABLE_MAIN {
		return nil, false, nil
	}
	if oif != 0 {
		return []int{oif}, true, nil
	}
	var out []int
	for len(multipath) >= unix.SizeofRtNexthop {
		nh := nl.DeserializeRtNexthop(multipath)
		n := int(nh.RtNexthop.Len)
		if n < unix.SizeofRtNexthop || n > len(multipath) {
			return nil, false, errors.New("malformed next hop")
		}
		if nh.RtNexthop.Ifindex != 0 {
			out = append(out, int(nh.RtNexthop.Ifindex))
		}
		multipath = multipath[(n+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1):]
	}
	return out, true, nil
}

// dumpAll reads links and routes again. Notifications queued before it are dropped
// first: the dump is newer than they are, and those queued after it are applied in
// order on the next refresh.
func (v *uplinkView) dumpAll() error {
	if v.fd >= 0 {
		v.discard()
	}
	v.full = true
	var links []netlink.Link
	err := retryInterrupted(func() (err error) {
		v.dumps++
		links, err = netlink.LinkList()
		return err
	})
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	v.links = make(map[int]netlink.Link, len(links))
	v.byName = make(map[string]int, len(links))
	for _, l := range links {
		v.setLink(l)
	}
	if err := v.dumpRoutes(); err != nil {
		return err
	}
	v.full = false
	v.lastFull = v.now()
	return nil
}

func (v *uplinkView) discard() {
	for {
		_, _, err := unix.Recvfrom(v.fd, v.buf, unix.MSG_DONTWAIT)
		if err != nil && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.ENOBUFS) {
			return
		}
	}
}

func (v *uplinkView) dumpRoutes() error {
	devs := map[int]bool{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		var routes []netlink.Route
		err := retryInterrupted(func() (err error) {
			v.dumps++
			routes, err = netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
			return err
		})
		if err != nil {
			v.routesDirty = true
			return fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range routes {
			if r.Type != unix.RTN_UNICAST {
				continue
			}
			if r.LinkIndex != 0 {
				devs[r.LinkIndex] = true
				continue
			}
			for _, nh := range r.MultiPath {
				devs[nh.LinkIndex] = true
			}
		}
	}
	v.routeDevs = devs
	v.routesDirty = false
	return nil
}

// retryInterrupted retries a dump the kernel reports as interrupted by a concurrent
// change (its result may be inconsistent).
func retryInterrupted(f func() error) error {
	var err error
	for try := 0; try < 5; try++ {
		if err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

// uplinkDevices is the devices linkRouteUplinks attaches to: those routes point at,
// except lo, bridge ports, the endpoints' veths and their bridges.
func (v *uplinkView) uplinkDevices(endpoints map[uint32]Endpoint) []netlink.Link {
	skip := map[int]bool{}
	for idx := range endpoints {
		skip[int(idx)] = true
		if l, ok := v.links[int(idx)]; ok && l.Attrs().MasterIndex != 0 {
			skip[l.Attrs().MasterIndex] = true
		}
	}
	var out []netlink.Link
	for idx := range v.routeDevs {
		l, ok := v.links[idx]
		if !ok || skip[idx] || staticSkip(l) {
			continue
		}
		out = append(out, l)
	}
	return out
}

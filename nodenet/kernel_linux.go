package nodenet

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Datapath applies a Plan and the masquerade rules to one network namespace. Apply may be
// called any number of times with the same plan; only differences reach the kernel, and
// what the kernel lost (a deleted route, FDB entry or device) is put back.
type Datapath interface {
	Apply(local Local, p Plan) error
	SetMasquerade(m Masquerade) error
	// LocalLink finds the interface holding addr and the subnet it is on.
	LocalLink(addr netip.Addr) (dev string, subnet netip.Prefix, err error)
	Close()
}

// Masquerade is the SNAT of pod traffic leaving the cluster CIDR.
type Masquerade struct {
	// Sources are this node's pod blocks; empty removes the chain.
	Sources []netip.Prefix
	// Cluster is never masqueraded to (pod-to-pod keeps real source addresses).
	Cluster []netip.Prefix
	Table   string // nftables inet table (default "patronus")
	Chain   string // chain of its own (default "nodenet-masq")
}

// netlinkDatapath is the real Datapath, working through handles opened in the target
// namespace (no thread ever switches namespace).
type netlinkDatapath struct {
	h   *netlink.Handle
	nsh netns.NsHandle
	nft *nftables.Conn
}

// OpenDatapath opens the namespace at nsPath ("" = the caller's namespace).
func OpenDatapath(nsPath string) (Datapath, error) {
	d := &netlinkDatapath{nsh: -1}
	var err error
	if nsPath == "" {
		d.h, err = netlink.NewHandle()
		if err == nil {
			d.nft, err = nftables.New()
		}
	} else {
		if d.nsh, err = netns.GetFromPath(nsPath); err != nil {
			return nil, fmt.Errorf("nodenet: netns %s: %w", nsPath, err)
		}
		d.h, err = netlink.NewHandleAt(d.nsh)
		if err == nil {
			d.nft, err = nftables.New(nftables.WithNetNSFd(int(d.nsh)))
		}
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("nodenet: netlink: %w", err)
	}
	return d, nil
}

func (d *netlinkDatapath) Close() {
	if d.h != nil {
		d.h.Close()
	}
	if d.nft != nil {
		d.nft.CloseLasting()
	}
	if d.nsh >= 0 {
		d.nsh.Close()
	}
}

func retry[T any](f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range 10 {
		if v, err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

func (d *netlinkDatapath) LocalLink(addr netip.Addr) (string, netip.Prefix, error) {
	addrs, err := retry(func() ([]netlink.Addr, error) { return d.h.AddrList(nil, unix.AF_INET) })
	if err != nil {
		return "", netip.Prefix{}, fmt.Errorf("nodenet: list addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap() != addr {
			continue
		}
		ones, _ := a.Mask.Size()
		l, err := d.h.LinkByIndex(a.LinkIndex)
		if err != nil {
			return "", netip.Prefix{}, fmt.Errorf("nodenet: link of %s: %w", addr, err)
		}
		return l.Attrs().Name, netip.PrefixFrom(addr, ones).Masked(), nil
	}
	return "", netip.Prefix{}, fmt.Errorf("nodenet: no interface has address %s", addr)
}

func (d *netlinkDatapath) Apply(local Local, p Plan) error {
	var errs []error
	if p.VXLAN {
		if err := d.ensureVXLAN(local, p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.syncVXLANEntries(p); err != nil {
		errs = append(errs, err)
	}
	if err := d.syncRoutes(p.Routes); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (d *netlinkDatapath) ensureVXLAN(local Local, p Plan) error {
	under, err := d.h.LinkByName(local.Dev)
	if err != nil {
		return fmt.Errorf("nodenet: underlay %s: %w", local.Dev, err)
	}
	mac, _ := net.ParseMAC(p.VTEPMAC)
	l, err := d.h.LinkByName(VXLANDevice)
	if err == nil {
		v, ok := l.(*netlink.Vxlan)
		if !ok || v.VxlanId != VXLANID || v.Port != VXLANPort || v.VtepDevIndex != under.Attrs().Index ||
			!v.SrcAddr.Equal(local.Addr.AsSlice()) || !bytes.Equal(v.HardwareAddr, mac) {
			if err := d.h.LinkDel(l); err != nil {
				return fmt.Errorf("nodenet: replace %s: %w", VXLANDevice, err)
			}
			l = nil
		}
	} else {
		l = nil
	}
	if l == nil {
		// MTU: the underlay's less the 50 bytes of VXLAN over IPv4.
		v := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, HardwareAddr: mac, MTU: under.Attrs().MTU - 50},
			VxlanId:   VXLANID, VtepDevIndex: under.Attrs().Index, SrcAddr: local.Addr.AsSlice(),
			Port: VXLANPort, Learning: false,
		}
		if err := d.h.LinkAdd(v); err != nil {
			return fmt.Errorf("nodenet: create %s: %w", VXLANDevice, err)
		}
		if l, err = d.h.LinkByName(VXLANDevice); err != nil {
			return fmt.Errorf("nodenet: %s: %w", VXLANDevice, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := d.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("nodenet: up %s: %w", VXLANDevice, err)
		}
	}
	want := &netlink.Addr{IPNet: &net.IPNet{IP: p.VTEPAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	addrs, err := retry(func() ([]netlink.Addr, error) { return d.h.AddrList(l, unix.AF_INET) })
	if err != nil {
		return fmt.Errorf("nodenet: addresses of %s: %w", VXLANDevice, err)
	}
	have := false
	for _, a := range addrs {
		if a.IP.Equal(want.IP) {
			have = true
		} else if err := d.h.AddrDel(l, &a); err != nil {
			return fmt.Errorf("nodenet: remove %s from %s: %w", a.IPNet, VXLANDevice, err)
		}
	}
	if !have {
		if err := d.h.AddrAdd(l, want); err != nil {
			return fmt.Errorf("nodenet: address %s on %s: %w", p.VTEPAddr, VXLANDevice, err)
		}
	}
	return nil
}

// syncVXLANEntries makes ptx0's permanent neighbours and FDB entries match the plan.
func (d *netlinkDatapath) syncVXLANEntries(p Plan) error {
	l, err := d.h.LinkByName(VXLANDevice)
	if err != nil {
		return nil // no device: nothing encapsulated (ensureVXLAN reported why if it should exist)
	}
	idx := l.Attrs().Index
	var errs []error
	// Neighbours (VTEP address → MAC).
	wantN := map[string]string{}
	for _, n := range p.Neighs {
		wantN[n.IP.String()] = n.MAC
	}
	ns, err := retry(func() ([]netlink.Neigh, error) { return d.h.NeighList(idx, unix.AF_INET) })
	if err != nil {
		return fmt.Errorf("nodenet: neighbours of %s: %w", VXLANDevice, err)
	}
	haveN := map[string]bool{}
	for _, n := range ns {
		if n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		ip := n.IP.String()
		if mac, ok := wantN[ip]; ok && mac == n.HardwareAddr.String() {
			haveN[ip] = true
			continue
		}
		if err := d.h.NeighDel(&n); err != nil {
			errs = append(errs, fmt.Errorf("nodenet: delete neighbour %s: %w", ip, err))
		}
	}
	for _, n := range p.Neighs {
		if haveN[n.IP.String()] {
			continue
		}
		mac, _ := net.ParseMAC(n.MAC)
		if err := d.h.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: n.IP.AsSlice(), HardwareAddr: mac}); err != nil {
			errs = append(errs, fmt.Errorf("nodenet: neighbour %s: %w", n.IP, err))
		}
	}
	// FDB (MAC → remote underlay address).
	wantF := map[string]string{}
	for _, f := range p.FDB {
		wantF[f.MAC] = f.Dst.String()
	}
	fs, err := retry(func() ([]netlink.Neigh, error) { return d.h.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("nodenet: fdb of %s: %w", VXLANDevice, err))...)
	}
	haveF := map[string]bool{}
	for _, f := range fs {
		if f.State&netlink.NUD_PERMANENT == 0 || f.IP == nil {
			continue
		}
		mac := f.HardwareAddr.String()
		if dst, ok := wantF[mac]; ok && dst == f.IP.String() {
			haveF[mac] = true
			continue
		}
		if err := d.h.NeighDel(&f); err != nil {
			errs = append(errs, fmt.Errorf("nodenet: delete fdb %s: %w", mac, err))
		}
	}
	for _, f := range p.FDB {
		if haveF[f.MAC] {
			continue
		}
		mac, _ := net.ParseMAC(f.MAC)
		if err := d.h.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: f.Dst.AsSlice(), HardwareAddr: mac}); err != nil {
			errs = append(errs, fmt.Errorf("nodenet: fdb %s: %w", f.MAC, err))
		}
	}
	return errors.Join(errs...)
}

// ownedRoutes lists the main table's routes carrying RouteProtocol.
func (d *netlinkDatapath) ownedRoutes() ([]netlink.Route, error) {
	return retry(func() ([]netlink.Route, error) {
		return d.h.RouteListFiltered(unix.AF_INET, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
}

func (d *netlinkDatapath) syncRoutes(want []Route) error {
	have, err := d.ownedRoutes()
	if err != nil {
		return fmt.Errorf("nodenet: list routes: %w", err)
	}
	links := map[string]int{}
	index := func(dev string) (int, error) {
		if i, ok := links[dev]; ok {
			return i, nil
		}
		l, err := d.h.LinkByName(dev)
		if err != nil {
			return 0, err
		}
		links[dev] = l.Attrs().Index
		return links[dev], nil
	}
	wantBy := map[netip.Prefix]Route{}
	for _, r := range want {
		wantBy[r.Dst.Masked()] = r
	}
	var errs []error
	ok := map[netip.Prefix]bool{}
	for _, h := range have {
		if h.Dst == nil {
			continue
		}
		ones, _ := h.Dst.Mask.Size()
		a, _ := netip.AddrFromSlice(h.Dst.IP)
		dst := netip.PrefixFrom(a.Unmap(), ones)
		w, wanted := wantBy[dst]
		if wanted {
			gw, _ := netip.AddrFromSlice(h.Gw)
			idx, err := index(w.Dev)
			onlink := h.Flags&unix.RTNH_F_ONLINK != 0
			if err == nil && gw.Unmap() == w.Via && h.LinkIndex == idx && onlink == w.OnLink {
				ok[dst] = true
				continue
			}
		}
		if err := d.h.RouteDel(&h); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("nodenet: delete route %s: %w", dst, err))
		}
	}
	for _, r := range want {
		if ok[r.Dst.Masked()] {
			continue
		}
		idx, err := index(r.Dev)
		if err != nil {
			errs = append(errs, fmt.Errorf("nodenet: route %v: link %s: %w", r, r.Dev, err))
			continue
		}
		nr := &netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: r.Dst.Masked().Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), 32)},
			Gw: r.Via.AsSlice(), Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
		if r.OnLink {
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
		if !r.Via.IsValid() {
			nr.Scope = netlink.SCOPE_LINK // a device route (the WireGuard device: no next hop)
		}
		if err := d.h.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("nodenet: route %v: %w", r, err))
		}
	}
	return errors.Join(errs...)
}

// SetMasquerade makes the chain m.Chain (type nat, hook postrouting, priority srcnat) in
// table inet m.Table hold one rule per source block:
//
//	ip saddr <block> ip daddr != <cluster CIDR> ... masquerade
//
// The rest of the table (other writers' chains) is never touched.
func (d *netlinkDatapath) SetMasquerade(m Masquerade) error {
	if m.Table == "" {
		m.Table = DefaultMasqTable
	}
	if m.Chain == "" {
		m.Chain = DefaultMasqChain
	}
	var want [][]byte
	var rules [][]expr.Any
	for _, src := range m.Sources {
		if !src.Addr().Is4() {
			continue
		}
		exprs := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		}
		exprs = append(exprs, matchIP(12, src, expr.CmpOpEq)...)
		desc := "saddr " + src.Masked().String()
		for _, c := range m.Cluster {
			if c.Addr().Is4() {
				exprs = append(exprs, matchIP(16, c, expr.CmpOpNeq)...)
				desc += " daddr!=" + c.Masked().String()
			}
		}
		exprs = append(exprs, &expr.Masq{})
		want = append(want, []byte(desc))
		rules = append(rules, exprs)
	}
	_, err := d.syncChain("masquerade", m.Table, nftables.Chain{Name: m.Chain, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource}, want, rules)
	return err
}

// syncChain makes chain spec.Name (of spec's type, hook and priority) in table inet
// table hold exactly rules, rule i tagged descs[i] (its UserData: equal tags mean the
// chain is already as wanted and is left alone, counters included); no rules removes the
// chain. The rest of the table (other writers' chains) is never touched. It returns the
// chain's rules when they were already as wanted, else nil (made anew or removed).
func (d *netlinkDatapath) syncChain(what, table string, spec nftables.Chain, descs [][]byte, rules [][]expr.Any) ([]*nftables.Rule, error) {
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	chains, err := d.nft.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nodenet: list chains: %w", err)
	}
	var chain *nftables.Chain
	for _, c := range chains {
		if c.Table.Name == table && c.Name == spec.Name {
			chain = c
		}
	}
	if len(descs) == 0 {
		if chain != nil {
			d.nft.FlushChain(chain)
			d.nft.DelChain(chain)
			if err := d.nft.Flush(); err != nil {
				return nil, fmt.Errorf("nodenet: remove chain %s: %w", spec.Name, err)
			}
		}
		return nil, nil
	}
	if chain != nil {
		have, err := d.nft.GetRules(t, chain)
		if err == nil && len(have) == len(descs) && slices.IndexFunc(have, func(r *nftables.Rule) bool {
			return !slices.ContainsFunc(descs, func(w []byte) bool { return bytes.Equal(w, r.UserData) })
		}) < 0 {
			return have, nil // already as wanted
		}
		d.nft.FlushChain(chain)
	} else {
		d.nft.AddTable(t)
		spec.Table = t
		chain = d.nft.AddChain(&spec)
	}
	for i, exprs := range rules {
		d.nft.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: exprs, UserData: descs[i]})
	}
	if err := d.nft.Flush(); err != nil {
		return nil, fmt.Errorf("nodenet: %s chain %s: %w", what, spec.Name, err)
	}
	return nil, nil
}

// matchIP loads the IPv4 address at offset (12 source, 16 destination) and compares its
// prefix with p.
func matchIP(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	p = p.Masked()
	mask := net.CIDRMask(p.Bits(), 32)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Addr().AsSlice()},
	}
}

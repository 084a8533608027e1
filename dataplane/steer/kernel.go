package steer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/patronus/patronus/dataplane/nlhandle"
)

// Kernel writes plans; Netlink is the real one.
type Kernel interface {
	// Program makes the node's chain, rules and per-path tables equal to p.
	Program(p Plan) error
	// Remove deletes everything this package owns.
	Remove() error
}

// Netlink programs one network namespace (NetNS path; "" = the caller's).
type Netlink struct {
	NetNS string
}

var _ Kernel = Netlink{}

func (k Netlink) nft() (*nftables.Conn, func(), error) {
	var opts []nftables.ConnOption
	var f *os.File
	if k.NetNS != "" {
		var err error
		if f, err = os.Open(k.NetNS); err != nil {
			return nil, nil, fmt.Errorf("steer: netns %s: %w", k.NetNS, err)
		}
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	}
	c, err := nftables.New(append(opts, nftables.AsLasting())...)
	if err != nil {
		if f != nil {
			f.Close()
		}
		return nil, nil, fmt.Errorf("steer: nftables: %w", err)
	}
	return c, func() {
		c.CloseLasting()
		if f != nil {
			f.Close()
		}
	}, nil
}

// Program writes the chain in one nftables transaction (the old rules are replaced
// atomically, so no packet sees a half-written chain), then the routes and rules.
// Routes go first so that a new rule never points to an empty table.
func (k Netlink) Program(p Plan) error {
	if err := k.programRoutes(p); err != nil {
		return err
	}
	c, done, err := k.nft()
	if err != nil {
		return err
	}
	defer done()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: Chain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept})
	c.FlushChain(ch)
	for _, r := range chainRules(p) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.exprs, UserData: []byte(r.comment)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("steer: writing chain %s: %w", Chain, err)
	}
	return nil
}

type rule struct {
	comment string
	exprs   []expr.Any
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// setMark replaces the PathMask bits of the packet mark (ct = false) or the connection
// mark (ct = true) with mark, leaving the other bits to their owners.
func setMark(ct bool, mark uint32) []expr.Any { return setBits(ct, PathMask, mark) }

// setBits replaces the mask bits of the packet or connection mark with value.
func setBits(ct bool, mask, value uint32) []expr.Any {
	bits := []expr.Any{&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(^mask), Xor: u32(value)}}
	if ct {
		return append(append([]expr.Any{&expr.Ct{Register: 1, Key: expr.CtKeyMARK}}, bits...),
			&expr.Ct{Register: 1, Key: expr.CtKeyMARK, SourceRegister: true})
	}
	return append(append([]expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}}, bits...),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true})
}

var ipv4 = []expr.Any{
	&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
	&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
}

func ipMatch(offset uint32, p netip.Prefix) []expr.Any {
	a := p.Addr().As4()
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	if p.Bits() < 32 {
		m := net.CIDRMask(p.Bits(), 32)
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: []byte{0, 0, 0, 0}})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]})
}

var ret = &expr.Verdict{Kind: expr.VerdictReturn}

// chainRules renders the three steps of the package comment.
func chainRules(p Plan) []rule {
	var out []rule
	// Rule 0: a guaranteed pod's packets carry its QoS mark, whatever their path (no
	// verdict: the path rules follow).
	for _, pod := range p.Marked {
		e := slices.Clone(ipv4)
		e = append(e, ipMatch(12, netip.PrefixFrom(pod.IP, 32))...)
		e = append(e, setBits(false, PodMask, pod.QoSMark)...)
		out = append(out, rule{"qos " + pod.Name, e})
	}
	for _, pa := range p.Paths {
		e := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(pa.Dev)},
		}
		// The packet mark too: with src_valid_mark on the device, reverse-path filtering
		// then looks the source up in the path's table, where it is routed via this
		// device (the main table may route it via another path's device).
		e = append(append(append(e, setMark(false, pa.Mark)...), setMark(true, pa.Mark)...), ret)
		out = append(out, rule{"in " + pa.ID, e})
	}
	for _, pa := range p.Paths {
		if !pa.Up {
			continue
		}
		e := []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(PathMask), Xor: u32(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: u32(pa.Mark)},
		}
		e = append(append(e, setMark(false, pa.Mark)...), ret)
		out = append(out, rule{"keep " + pa.ID, e})
	}
	// Rules 3 and 4: the same steer, rule 4's (Defaults) for any sender.
	for _, s := range slices.Concat(p.Steers, p.Defaults) {
		e := slices.Clone(ipv4)
		name := "default " + s.Prefix.String() + " " + s.PathID
		if s.Pod.IsValid() {
			e = append(e, ipMatch(12, netip.PrefixFrom(s.Pod, 32))...)
			name = "pod " + s.Name + " " + s.Prefix.String() + " " + s.PathID
		}
		e = append(e, ipMatch(16, s.Prefix)...)
		e = append(e, setMark(false, s.Mark)...)
		e = append(append(e, setMark(true, s.Mark)...), ret)
		out = append(out, rule{name, e})
	}
	return out
}

func ownedTable(t int) bool { return t > TableBase && t <= TableBase+int(PathMask>>16) }

// programRoutes makes the fwmark rules and the per-path tables equal to p.
func (k Netlink) programRoutes(p Plan) error {
	h, err := nlhandle.Open(k.NetNS)
	if err != nil {
		return fmt.Errorf("steer: %w", err)
	}
	defer h.Close()
	type rkey struct {
		table int
		dst   netip.Prefix
	}
	want := map[rkey]*netlink.Route{}
	for _, pa := range p.Paths {
		l, err := h.LinkByName(pa.Dev)
		if err != nil {
			// A path whose device is gone has no routes: its traffic would be dropped by
			// the empty table's fallthrough to main, which is the unsteered behaviour.
			continue
		}
		for _, pfx := range pa.Prefixes {
			r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(pfx), Table: pa.Table, Protocol: RouteProtocol,
				Scope: netlink.SCOPE_LINK}
			if pa.Via.IsValid() {
				r.Gw, r.Scope = pa.Via.AsSlice(), netlink.SCOPE_UNIVERSE
			}
			want[rkey{pa.Table, pfx}] = r
		}
	}
	have, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: RouteProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("steer: list routes: %w", err)
	}
	for _, r := range have {
		if !ownedTable(r.Table) || r.Dst == nil {
			continue
		}
		pfx, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		k := rkey{r.Table, netip.PrefixFrom(pfx.Unmap(), ones)}
		if w := want[k]; w != nil && w.LinkIndex == r.LinkIndex && w.Gw.Equal(r.Gw) {
			delete(want, k)
			continue
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("steer: delete route %s table %d: %w", r.Dst, r.Table, err)
		}
	}
	for _, r := range want {
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("steer: route %s table %d: %w", r.Dst, r.Table, err)
		}
	}

	wantRules := map[uint32]int{} // mark → table
	for _, pa := range p.Paths {
		wantRules[pa.Mark] = pa.Table
	}
	rules, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("steer: list rules: %w", err)
	}
	for _, r := range rules {
		if r.Priority != RulePriority || !ownedTable(r.Table) {
			continue
		}
		if t, ok := wantRules[r.Mark]; ok && t == r.Table && r.Mask != nil && *r.Mask == PathMask {
			delete(wantRules, r.Mark)
			continue
		}
		if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("steer: delete rule fwmark %#x: %w", r.Mark, err)
		}
	}
	for mark, table := range wantRules {
		r := netlink.NewRule()
		r.Family, r.Priority, r.Table, r.Mark, r.Protocol = netlink.FAMILY_V4, RulePriority, table, mark, RouteProtocol
		mask := PathMask
		r.Mask = &mask
		if err := h.RuleAdd(r); err != nil {
			return fmt.Errorf("steer: rule fwmark %#x lookup %d: %w", mark, table, err)
		}
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Remove deletes the chain, the fwmark rules and the per-path tables' routes.
func (k Netlink) Remove() error {
	c, done, err := k.nft()
	if err != nil {
		return err
	}
	defer done()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
	if ch, err := c.ListChain(t, Chain); err == nil {
		c.FlushChain(ch)
		c.DelChain(ch)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("steer: delete chain %s: %w", Chain, err)
		}
	}
	return k.programRoutes(Plan{})
}

package nodenet

import (
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// SetStrict implements StrictDatapath on the real datapath (StrictDatapath says what it
// makes). Like SetMasquerade it touches only its own chain of the shared table.
func (d *netlinkDatapath) SetStrict(s Strict) (uint64, error) {
	if s.Table == "" {
		s.Table = DefaultMasqTable
	}
	if s.Chain == "" {
		s.Chain = DefaultStrictChain
	}
	if s.Device == "" {
		s.Device = WGDevice
	}
	if s.TunnelDevices == "" {
		s.TunnelDevices = StrictTunnelDevices
	}
	var want [][]byte
	var rules [][]expr.Any
	// add appends the rule dropping src→dst leaving by an interface matching none of oifs
	// (each an exact name or a wildcard ending in *).
	add := func(src, dst netip.Prefix, oifs ...string) {
		if !src.Addr().Is4() || !dst.Addr().Is4() {
			return
		}
		exprs := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		}
		exprs = append(exprs, matchIP(12, src, expr.CmpOpEq)...)
		exprs = append(exprs, matchIP(16, dst, expr.CmpOpEq)...)
		exprs = append(exprs, &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1})
		for _, o := range oifs {
			exprs = append(exprs, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifnameMatch(o)})
		}
		exprs = append(exprs, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
		want = append(want, []byte("strict saddr "+src.Masked().String()+" daddr "+dst.Masked().String()+" oifname!="+strings.Join(oifs, ",")))
		rules = append(rules, exprs)
	}
	for _, src := range s.Sources {
		for _, dst := range s.Guarded {
			add(src, dst, s.Device)
		}
		for _, dst := range s.Remote {
			add(src, dst, s.Device, s.TunnelDevices)
		}
	}
	have, err := d.syncChain("strict", s.Table, nftables.Chain{Name: s.Chain, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter}, want, rules)
	return dropped(have), err
}

// dropped sums the packets of the rules' counters.
func dropped(rules []*nftables.Rule) uint64 {
	var n uint64
	for _, r := range rules {
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Counter); ok {
				n += c.Packets
			}
		}
	}
	return n
}

// ifname is an interface name as the kernel compares it (NUL-padded to IFNAMSIZ).
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// ifnameMatch is what a cmp compares the oifname register with: a name ending in * is
// a wildcard, its prefix without padding (the kernel compares only that many bytes; nft
// shows it as "prefix*"), any other name is matched whole (ifname).
func ifnameMatch(n string) []byte {
	if p, ok := strings.CutSuffix(n, "*"); ok {
		return []byte(p)
	}
	return ifname(n)
}

package nft

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/policy"
)

type addrRange struct{ lo, hi netip.Addr }

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// peerRanges returns the address ranges of a peer (prefix minus excepts) in one family.
func peerRanges(p policy.Peer, v6 bool) []addrRange {
	pre := netip.PrefixFrom(p.Prefix.Addr().Unmap(), p.Prefix.Bits()-unmapBits(p.Prefix)).Masked()
	if pre.Addr().Is6() != v6 {
		return nil
	}
	rs := []addrRange{{pre.Addr(), lastAddr(pre)}}
	for _, x := range p.Except {
		x = netip.PrefixFrom(x.Addr().Unmap(), x.Bits()-unmapBits(x)).Masked()
		if x.Addr().Is6() != v6 {
			continue
		}
		xlo, xhi := x.Addr(), lastAddr(x)
		var next []addrRange
		for _, r := range rs {
			if xhi.Less(r.lo) || r.hi.Less(xlo) {
				next = append(next, r)
				continue
			}
			if r.lo.Less(xlo) {
				next = append(next, addrRange{r.lo, xlo.Prev()})
			}
			if xhi.Less(r.hi) {
				next = append(next, addrRange{xhi.Next(), r.hi})
			}
		}
		rs = next
	}
	return rs
}

func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// mergeRanges sorts and joins overlapping or adjacent ranges (interval set elements
// must not overlap).
func mergeRanges(rs []addrRange) []addrRange {
	sort.Slice(rs, func(i, j int) bool { return rs[i].lo.Less(rs[j].lo) })
	var out []addrRange
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			// Overlapping or adjacent (r.lo <= last.hi+1), or last already reaches the end.
			if nx := last.hi.Next(); !nx.IsValid() || !nx.Less(r.lo) {
				if last.hi.Less(r.hi) {
					last.hi = r.hi
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

func addrElements(rs []addrRange) []nftables.SetElement {
	var els []nftables.SetElement
	for _, r := range mergeRanges(rs) {
		els = append(els, nftables.SetElement{Key: r.lo.AsSlice()})
		if nx := r.hi.Next(); nx.IsValid() && r.hi.BitLen() == nx.BitLen() {
			els = append(els, nftables.SetElement{Key: nx.AsSlice(), IntervalEnd: true})
		}
	}
	return els
}

type portRange struct{ lo, hi uint16 }

func portElements(ps []portRange) []nftables.SetElement {
	sort.Slice(ps, func(i, j int) bool { return ps[i].lo < ps[j].lo })
	var merged []portRange
	for _, p := range ps {
		if n := len(merged); n > 0 && int(p.lo) <= int(merged[n-1].hi)+1 {
			if p.hi > merged[n-1].hi {
				merged[n-1].hi = p.hi
			}
			continue
		}
		merged = append(merged, p)
	}
	var els []nftables.SetElement
	for _, p := range merged {
		els = append(els, nftables.SetElement{Key: be16(p.lo)})
		if p.hi < 65535 {
			els = append(els, nftables.SetElement{Key: be16(p.hi + 1), IntervalEnd: true})
		}
	}
	return els
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// match is one rule of an endpoint chain: family, optional address set or range,
// optional protocol, optional port set or range.
type match struct {
	v6      bool
	addrSet string
	addr    *addrRange
	proto   uint8
	portSet string
	port    *portRange
}

func (e *Enforcer) build(ep enforce.Endpoint, dir enforce.Direction, rules []policy.Rule) *chainSpec {
	h := fnv.New64a()
	fmt.Fprintf(h, "%v|%v|%v|%d", dir, e.opts.Linear, rules, e.opts.LogGroup)
	letter := "i"
	if dir == enforce.Egress {
		letter = "e"
	}
	cs := &chainSpec{name: fmt.Sprintf("%s%s-%016x", letter, epTag(ep.Key()), h.Sum64()), ep: ep, dir: dir}
	var ms []match
	if e.opts.Linear {
		ms = linearMatches(rules)
	} else {
		ms = cs.setMatches(rules)
	}
	peerOff := uint32(12) // ingress: the peer is the source
	if dir == enforce.Egress {
		peerOff = 16
	}
	for _, m := range ms {
		cs.rules = append(cs.rules, ruleSpec{exprs: m.exprs(peerOff)})
	}
	if e.opts.LogGroup != 0 {
		// The denial is reported to the agent over NFLOG (the audit log), prefixed with
		// the endpoint's stable chain name. Rate-limited in a rule of its own with no
		// verdict: a packet over the limit still meets the drop below.
		prefix := stableName(cs.name)
		cs.rules = append(cs.rules, ruleSpec{
			exprs: func(map[string]*nftables.Set) []expr.Any {
				return []expr.Any{
					&expr.Limit{Type: expr.LimitTypePkts, Rate: logRate, Unit: expr.LimitTimeSecond, Burst: logBurst},
					&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_SNAPLEN,
						Group: e.opts.LogGroup, Data: []byte(prefix), Snaplen: logSnaplen},
				}
			},
			user: []byte("patronus-deny-log"),
		})
	}
	cs.rules = append(cs.rules, ruleSpec{
		exprs: func(map[string]*nftables.Set) []expr.Any {
			return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
		},
		user: []byte("patronus-deny"),
	})
	return cs
}

// auditRules is the content of an audit chain (name "ai<tag>" or "ae<tag>", see
// auditChain): a connection not yet marked as reported gets the direction's mark and
// its packet is logged, prefixed with the chain's name, then the chain returns. The mark
// is set only when the message is sent (under the rate limit), so a connection whose
// first packet exceeded the limit is reported by a later one if it has any.
func (e *Enforcer) auditRules(name string) []ruleSpec {
	bit := auditMark(enforce.Ingress)
	if name[1] == 'e' {
		bit = auditMark(enforce.Egress)
	}
	u32 := binaryutil.NativeEndian.PutUint32
	return []ruleSpec{
		{exprs: func(map[string]*nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(bit), Xor: u32(0)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)},
				&expr.Verdict{Kind: expr.VerdictReturn},
			}
		}, user: []byte("patronus-audit-seen")},
		{exprs: func(map[string]*nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Limit{Type: expr.LimitTypePkts, Rate: allowLogRate, Unit: expr.LimitTimeSecond, Burst: allowLogBurst},
				&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(^bit), Xor: u32(bit)},
				&expr.Ct{Register: 1, Key: expr.CtKeyMARK, SourceRegister: true},
				&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_SNAPLEN,
					Group: e.opts.LogGroup, Data: []byte(name), Snaplen: logSnaplen},
			}
		}, user: []byte("patronus-audit-log")},
	}
}

// setMatches: one rule per (class, family, protocol), addresses and ports in interval
// sets: the cost per packet does not grow with the number of peers or ports.
func (cs *chainSpec) setMatches(rules []policy.Rule) []match {
	var ms []match
	for i, c := range enforce.Classes(rules) {
		for _, v6 := range []bool{false, true} {
			fam := 4
			if v6 {
				fam = 6
			}
			m := match{v6: v6}
			if !c.Any {
				var rs []addrRange
				for _, p := range c.Peers {
					rs = append(rs, peerRanges(p, v6)...)
				}
				if len(rs) == 0 {
					continue
				}
				m.addrSet = fmt.Sprintf("%s-a%d-%d", cs.name, i, fam)
				cs.sets = append(cs.sets, setSpec{name: m.addrSet, key: keyType(v6), elements: addrElements(rs)})
			}
			if c.AllPorts {
				ms = append(ms, m)
				continue
			}
			byProto := map[policy.Protocol][]portRange{}
			all := map[policy.Protocol]bool{}
			for _, p := range c.Ports {
				if p.First == 0 && p.Last == 0 {
					all[p.Protocol] = true
					continue
				}
				byProto[p.Protocol] = append(byProto[p.Protocol], portRange{p.First, max(p.First, p.Last)})
			}
			protos := slices.Sorted(func(yield func(policy.Protocol) bool) {
				seen := map[policy.Protocol]bool{}
				for _, p := range c.Ports {
					if !seen[p.Protocol] {
						seen[p.Protocol] = true
						if !yield(p.Protocol) {
							return
						}
					}
				}
			})
			for _, proto := range protos {
				pm := m
				pm.proto = uint8(proto)
				if !all[proto] {
					pm.portSet = fmt.Sprintf("%s-p%d-%d-%d", cs.name, i, fam, proto)
					cs.sets = append(cs.sets, setSpec{name: pm.portSet, key: nftables.TypeInetService, elements: portElements(byProto[proto])})
				}
				ms = append(ms, pm)
			}
		}
	}
	return ms
}

// linearMatches: one rule per (rule, peer range, port range), immediate comparisons,
// evaluated one after the other: the classic baseline.
func linearMatches(rules []policy.Rule) []match {
	var ms []match
	for _, r := range rules {
		type addrOpt struct {
			v6 bool
			r  *addrRange
		}
		var addrs []addrOpt
		if len(r.Peers) == 0 {
			addrs = []addrOpt{{false, nil}, {true, nil}}
		}
		for _, p := range r.Peers {
			for _, v6 := range []bool{false, true} {
				for _, ar := range peerRanges(p, v6) {
					ar := ar
					addrs = append(addrs, addrOpt{v6, &ar})
				}
			}
		}
		for _, a := range addrs {
			if len(r.Ports) == 0 {
				ms = append(ms, match{v6: a.v6, addr: a.r})
				continue
			}
			for _, p := range r.Ports {
				m := match{v6: a.v6, addr: a.r, proto: uint8(p.Protocol)}
				if p.First != 0 || p.Last != 0 {
					m.port = &portRange{p.First, max(p.First, p.Last)}
				}
				ms = append(ms, m)
			}
		}
	}
	return ms
}

func (m match) exprs(peerOff uint32) func(map[string]*nftables.Set) []expr.Any {
	return func(sets map[string]*nftables.Set) []expr.Any {
		fam, alen, off := byte(unix.NFPROTO_IPV4), uint32(4), peerOff
		if m.v6 {
			fam, alen = unix.NFPROTO_IPV6, 16
			off = 8 // ip6 saddr
			if peerOff == 16 {
				off = 24 // ip6 daddr
			}
		}
		x := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam}},
		}
		if m.addrSet != "" || m.addr != nil {
			x = append(x, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: alen})
			if m.addrSet != "" {
				s := sets[m.addrSet]
				x = append(x, &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID})
			} else {
				x = append(x, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: m.addr.lo.AsSlice(), ToData: m.addr.hi.AsSlice()})
			}
		}
		if m.proto != 0 {
			x = append(x,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{m.proto}})
		}
		if m.portSet != "" || m.port != nil {
			x = append(x, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
			if m.portSet != "" {
				s := sets[m.portSet]
				x = append(x, &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID})
			} else if m.port.lo == m.port.hi {
				x = append(x, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(m.port.lo)})
			} else {
				x = append(x, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: be16(m.port.lo), ToData: be16(m.port.hi)})
			}
		}
		return append(x, &expr.Verdict{Kind: expr.VerdictReturn})
	}
}

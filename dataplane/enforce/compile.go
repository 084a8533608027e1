package enforce

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/patronus/patronus/policy"
)

// MaxClasses is how many rule classes one endpoint may have per direction in the eBPF
// datapath (the width of the bitmasks in the maps). Rules with the same port set share
// one class, and classes with the same peers are merged, so this bounds distinct
// (peers, ports) combinations, not rules.
const MaxClasses = 256

// ErrTooManyClasses is returned (wrapped) when an endpoint's rules need more than
// MaxClasses classes in one direction; the nftables datapath has no such limit.
var ErrTooManyClasses = errors.New("too many distinct rule classes for the eBPF datapath")

// Direction of a check, as seen from the endpoint whose policy is applied.
type Direction uint8

const (
	Ingress Direction = 0 // toward the pod
	Egress  Direction = 1 // from the pod
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Endpoint flags, as in bpf/src/policy.c.
const (
	flagIngressIsolated = 1 << 0
	flagEgressIsolated  = 1 << 1
	flagAuditAllow      = 1 << 2
)

type classMask [4]uint64

func (m *classMask) set(i int) { m[i/64] |= 1 << (i % 64) }

// cidrEntry is one prefix of the CIDR trie: Prefix in 16-byte form (IPv4 mapped).
type cidrEntry struct {
	Dir    Direction
	Prefix netip.Prefix
	Mask   classMask
}

// portEntry is one key of the port trie. Bits counts the matched bits after the
// direction: 0 = every protocol, 8 = every port of Proto, 8+n = the first n bits of Port.
type portEntry struct {
	Dir   Direction
	Bits  int
	Proto uint8
	Port  uint16
	Mask  classMask
}

// compiled is one endpoint's rules in the shape of the eBPF maps.
type compiled struct {
	Flags uint32
	Cidrs []cidrEntry
	Ports []portEntry
	Hash  uint64 // of flags and entries: equal hash, equal map contents
}

// Class is a set of rules that can share one bit: allowed iff the peer matches one of
// Peers (or Any) and the port matches one of Ports (or AllPorts). The nftables
// datapath uses the same grouping for its sets.
type Class struct {
	Any      bool
	Peers    []policy.Peer
	AllPorts bool
	Ports    []policy.PortRange
}

// Classes groups rules: first by identical port sets (peers are unioned), then classes
// with identical peer sets are merged (ports unioned). Both keep the meaning "some rule
// matches both the peer and the port".
func Classes(rules []policy.Rule) []Class {
	var out []Class
	byPorts := map[string]int{}
	for _, r := range rules {
		pk := portsKey(r.Ports)
		i, ok := byPorts[pk]
		if !ok {
			i = len(out)
			byPorts[pk] = i
			out = append(out, Class{AllPorts: len(r.Ports) == 0, Ports: r.Ports})
		}
		if len(r.Peers) == 0 {
			out[i].Any = true
		}
		out[i].Peers = append(out[i].Peers, r.Peers...)
	}
	var merged []Class
	byPeers := map[string]int{}
	for _, c := range out {
		k := peersKey(c)
		i, ok := byPeers[k]
		if !ok {
			byPeers[k] = len(merged)
			merged = append(merged, c)
			continue
		}
		m := &merged[i]
		m.AllPorts = m.AllPorts || c.AllPorts
		m.Ports = append(slices.Clone(m.Ports), c.Ports...)
	}
	return merged
}

func portsKey(ps []policy.PortRange) string {
	if len(ps) == 0 {
		return "*"
	}
	ss := make([]string, len(ps))
	for i, p := range ps {
		ss[i] = fmt.Sprintf("%d/%d-%d", p.Protocol, p.First, p.Last)
	}
	sort.Strings(ss)
	return strings.Join(slices.Compact(ss), ",")
}

func peersKey(c Class) string {
	if c.Any {
		return "*"
	}
	ss := make([]string, len(c.Peers))
	for i, p := range c.Peers {
		ex := make([]string, len(p.Except))
		for j, e := range p.Except {
			ex[j] = e.Masked().String()
		}
		sort.Strings(ex)
		ss[i] = p.Prefix.Masked().String() + "!" + strings.Join(ex, "!")
	}
	sort.Strings(ss)
	return strings.Join(slices.Compact(ss), ",")
}

// to16 maps a prefix into the 128-bit space the maps use (IPv4 as ::ffff:0:0/96).
func to16(p netip.Prefix) netip.Prefix {
	p = p.Masked()
	if p.Addr().Is4() {
		return netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), p.Bits()+96)
	}
	return p
}

// covers reports whether prefix a contains all of prefix b (both in 16-byte form).
func covers(a, b netip.Prefix) bool {
	return a.Bits() <= b.Bits() && a.Contains(b.Addr())
}

// cidrEntries computes, for every boundary prefix (peer prefixes, excepts, and ::/0 for
// "any peer"), the classes that contain it and do not except it. Because prefixes nest
// or are disjoint, the longest boundary matching an address carries exactly the classes
// matching that address; an except gets its own entry (possibly with an empty mask) so
// that it hides its parent.
func cidrEntries(dir Direction, cs []Class) []cidrEntry {
	bset := map[netip.Prefix]bool{}
	for _, c := range cs {
		if c.Any {
			bset[netip.PrefixFrom(netip.IPv6Unspecified(), 0)] = true
		}
		for _, p := range c.Peers {
			bset[to16(p.Prefix)] = true
			for _, e := range p.Except {
				bset[to16(e)] = true
			}
		}
	}
	var out []cidrEntry
	for b := range bset {
		e := cidrEntry{Dir: dir, Prefix: b}
		for i, c := range cs {
			if c.Any {
				e.Mask.set(i)
				continue
			}
			for _, p := range c.Peers {
				if !covers(to16(p.Prefix), b) {
					continue
				}
				excepted := false
				for _, x := range p.Except {
					if covers(to16(x), b) {
						excepted = true
						break
					}
				}
				if !excepted {
					e.Mask.set(i)
					break
				}
			}
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Prefix.Bits() != out[j].Prefix.Bits() {
			return out[i].Prefix.Bits() < out[j].Prefix.Bits()
		}
		return out[i].Prefix.Addr().Less(out[j].Prefix.Addr())
	})
	return out
}

// portBlocks splits [first, last] into aligned power-of-two blocks (at most 30), each
// returned as (start, bits) with bits the number of fixed leading port bits. A range
// is stored this way rather than expanded to every port (up to 65,535 entries per rule
// and endpoint) or kept as an array to scan (a loop per packet): the trie answers with
// one lookup and the entry count stays small.
func portBlocks(first, last uint16) [][2]int {
	var out [][2]int
	lo, hi := int(first), int(last)
	for lo <= hi {
		size := 1
		// Grow while lo stays aligned and the block stays inside the range.
		for size < 65536 && lo%(size*2) == 0 && lo+size*2-1 <= hi {
			size *= 2
		}
		bits := 16
		for s := size; s > 1; s /= 2 {
			bits--
		}
		out = append(out, [2]int{lo, bits})
		lo += size
	}
	return out
}

func portCovers(a, b portEntry) bool {
	if a.Bits > b.Bits {
		return false
	}
	if a.Bits == 0 {
		return true
	}
	if a.Proto != b.Proto {
		return false
	}
	pb := a.Bits - 8
	if pb == 0 {
		return true
	}
	shift := 16 - pb
	return a.Port>>shift == b.Port>>shift
}

func portEntries(dir Direction, cs []Class) []portEntry {
	type key struct {
		bits  int
		proto uint8
		port  uint16
	}
	owners := map[key][]int{}
	for i, c := range cs {
		if c.AllPorts {
			owners[key{0, 0, 0}] = append(owners[key{0, 0, 0}], i)
			continue
		}
		for _, pr := range c.Ports {
			if pr.First == 0 && pr.Last == 0 {
				k := key{8, uint8(pr.Protocol), 0}
				owners[k] = append(owners[k], i)
				continue
			}
			last := pr.Last
			if last < pr.First {
				last = pr.First
			}
			for _, b := range portBlocks(pr.First, last) {
				k := key{8 + b[1], uint8(pr.Protocol), uint16(b[0])}
				owners[k] = append(owners[k], i)
			}
		}
	}
	var out []portEntry
	for k := range owners {
		out = append(out, portEntry{Dir: dir, Bits: k.bits, Proto: k.proto, Port: k.port})
	}
	for i := range out {
		for k, cls := range owners {
			a := portEntry{Bits: k.bits, Proto: k.proto, Port: k.port}
			if portCovers(a, out[i]) {
				for _, c := range cls {
					out[i].Mask.set(c)
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Bits != b.Bits {
			return a.Bits < b.Bits
		}
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		return a.Port < b.Port
	})
	return out
}

// compile turns one endpoint's policy into map entries. Directions that are not
// isolated get no entries: the datapath never consults them.
func compile(ep Endpoint) (compiled, error) {
	var c compiled
	if ep.IngressIsolated {
		c.Flags |= flagIngressIsolated
	}
	if ep.EgressIsolated {
		c.Flags |= flagEgressIsolated
	}
	if ep.AuditAllowed {
		c.Flags |= flagAuditAllow
	}
	for _, d := range []struct {
		dir      Direction
		isolated bool
		rules    []policy.Rule
	}{{Ingress, ep.IngressIsolated, ep.Ingress}, {Egress, ep.EgressIsolated, ep.Egress}} {
		if !d.isolated {
			continue
		}
		cs := Classes(d.rules)
		if len(cs) > MaxClasses {
			return compiled{}, fmt.Errorf("endpoint %s/%s %s: %d classes (max %d): %w",
				ep.Namespace, ep.Pod, d.dir, len(cs), MaxClasses, ErrTooManyClasses)
		}
		c.Cidrs = append(c.Cidrs, cidrEntries(d.dir, cs)...)
		c.Ports = append(c.Ports, portEntries(d.dir, cs)...)
	}
	h := fnv.New64a()
	var buf [8]byte
	binary.LittleEndian.PutUint32(buf[:4], c.Flags)
	h.Write(buf[:4])
	for _, e := range c.Cidrs {
		h.Write([]byte{byte(e.Dir), byte(e.Prefix.Bits())})
		a := e.Prefix.Addr().As16()
		h.Write(a[:])
		for _, w := range e.Mask {
			binary.LittleEndian.PutUint64(buf[:], w)
			h.Write(buf[:])
		}
	}
	for _, e := range c.Ports {
		h.Write([]byte{byte(e.Dir), byte(e.Bits), e.Proto, byte(e.Port >> 8), byte(e.Port)})
		for _, w := range e.Mask {
			binary.LittleEndian.PutUint64(buf[:], w)
			h.Write(buf[:])
		}
	}
	c.Hash = h.Sum64()
	return c, nil
}

// fingerprint hashes everything compile reads (isolation, audit flag, peers, ports),
// cheaply, so unchanged endpoints can skip compilation.
func fingerprint(ep Endpoint) uint64 {
	h := fnv.New64a()
	var b [8]byte
	put := func(v uint64) {
		binary.LittleEndian.PutUint64(b[:], v)
		h.Write(b[:])
	}
	prefix := func(p netip.Prefix) {
		a := p.Addr().As16()
		h.Write(a[:])
		put(uint64(p.Bits()) + 1000*uint64(p.Addr().BitLen()))
	}
	flags := uint64(0)
	if ep.IngressIsolated {
		flags |= 1
	}
	if ep.EgressIsolated {
		flags |= 2
	}
	if ep.AuditAllowed {
		flags |= 4
	}
	put(flags)
	for _, rules := range [][]policy.Rule{ep.Ingress, ep.Egress} {
		put(uint64(len(rules)))
		for _, r := range rules {
			put(uint64(len(r.Peers)))
			for _, p := range r.Peers {
				prefix(p.Prefix)
				put(uint64(len(p.Except)))
				for _, x := range p.Except {
					prefix(x)
				}
			}
			put(uint64(len(r.Ports)))
			for _, pr := range r.Ports {
				put(uint64(pr.Protocol)<<32 | uint64(pr.First)<<16 | uint64(pr.Last))
			}
		}
	}
	return h.Sum64()
}

package enforce

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/patronus/patronus/bpf"
)

// objects are the maps the programs use (a subset of bpf.PolicyObjects, so tests can
// build them without pinning).
type maps struct {
	endpoints, endpointIPs, cidrs, ports, egressDefer, conntrack, denies, stats, events *ebpf.Map
}

func mapsOf(o *bpf.PolicyObjects) maps {
	return maps{
		endpoints: o.PtEndpoints, endpointIPs: o.PtEndpointIps, cidrs: o.PtCidrs, ports: o.PtPorts,
		egressDefer: o.PtEgressDefer, conntrack: o.PtConntrack, denies: o.PtDenies,
		stats: o.PtStats, events: o.PtEvents,
	}
}

// htons: port keys are compared bytewise, most significant first, so they are stored
// in network order (the maps are little-endian only: bpf2go -target bpfel).
func htons(v uint16) uint16 { return bits.ReverseBytes16(v) }

func addr16(a netip.Addr) [16]byte { return a.Unmap().As16() }

func cidrKey(setID uint32, e cidrEntry) bpf.PolicyCidrKey {
	return bpf.PolicyCidrKey{
		Prefixlen: uint32(64 + e.Prefix.Bits()),
		SetId:     setID,
		Dir:       uint8(e.Dir),
		Addr:      e.Prefix.Addr().As16(),
	}
}

func portKey(setID uint32, e portEntry) bpf.PolicyPortKey {
	return bpf.PolicyPortKey{
		Prefixlen: uint32(40 + e.Bits),
		SetId:     setID,
		Dir:       uint8(e.Dir),
		Proto:     e.Proto,
		Port:      htons(e.Port),
	}
}

// syncer keeps the maps equal to a desired set of endpoints keyed by ifindex. It is the
// whole map-writing logic of the eBPF enforcer, separate from interfaces and links so
// that Program.Run tests can use it.
//
// Rule sets are immutable: an endpoint whose compiled rules change gets a new set id,
// its entries are written first, then its endpoint entry is switched to the new id in
// one map update, then the old set is deleted. A packet therefore sees either the old
// or the new rules, never a mix. Unchanged endpoints cause no writes at all.
//
// The syncer is the only writer of the endpoint maps, so it reads them once (at load,
// to take over a previous agent's state) and keeps a mirror, and it caches compiled
// rules by a fingerprint of their input: a Set that changes nothing costs no syscalls
// and no compilation.
type syncer struct {
	m       maps
	nextSet uint32
	gc      bool // collect orphan sets on the next sync (set after load: a crash may leave some)

	eps   map[uint32]bpf.PolicyEndpoint   // mirror of pt_endpoints
	ips   map[[16]byte]bpf.PolicyEndpoint // mirror of pt_endpoint_ips
	cache map[uint32]cached               // compiled rules by ifindex
}

type staleSet struct {
	id uint32
	c  compiled
}

// deleteSet deletes the entries of a rule set no endpoint uses any more.
func (s *syncer) deleteSet(st staleSet) error {
	var errs []error
	for _, e := range st.c.Cidrs {
		if err := s.m.cidrs.Delete(cidrKey(st.id, e)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for _, e := range st.c.Ports {
		if err := s.m.ports.Delete(portKey(st.id, e)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

type cached struct {
	fp uint64
	c  compiled
}

func newSyncer(m maps) (*syncer, error) {
	s := &syncer{m: m, nextSet: 1, gc: true, eps: map[uint32]bpf.PolicyEndpoint{},
		ips: map[[16]byte]bpf.PolicyEndpoint{}, cache: map[uint32]cached{}}
	var k uint32
	var v bpf.PolicyEndpoint
	it := m.endpoints.Iterate()
	for it.Next(&k, &v) {
		s.eps[k] = v
		if v.SetId >= s.nextSet {
			s.nextSet = v.SetId + 1
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading endpoints map: %w", err)
	}
	var a [16]byte
	it = m.endpointIPs.Iterate()
	for it.Next(&a, &v) {
		s.ips[a] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading endpoint IPs map: %w", err)
	}
	return s, nil
}

// compileCached compiles ep unless its rules are unchanged since the last call.
func (s *syncer) compileCached(ifindex uint32, ep Endpoint) (compiled, error) {
	fp := fingerprint(ep)
	if c, ok := s.cache[ifindex]; ok && c.fp == fp {
		return c.c, nil
	}
	c, err := compile(ep)
	if err != nil {
		return c, err
	}
	s.cache[ifindex] = cached{fp, c}
	return c, nil
}

func (s *syncer) allocSet(used map[uint32]bool) uint32 {
	for {
		id := s.nextSet
		s.nextSet++
		if s.nextSet == 0 {
			s.nextSet = 1
		}
		if id != 0 && !used[id] {
			return id
		}
	}
}

// sync makes the maps hold exactly desired (ifindex → endpoint). Endpoints that fail to
// compile keep their previous state and are reported in the error.
func (s *syncer) sync(desired map[uint32]Endpoint) error {
	var errs []error
	cur := s.eps
	used := map[uint32]bool{}
	for _, v := range cur {
		used[v.SetId] = true
	}
	// Old rule sets are deleted key by key when their compiled form is still cached;
	// otherwise (after a restart, after an error) by a full scan of the tries.
	full := s.gc
	var stale []staleSet
	next := map[uint32]bpf.PolicyEndpoint{}
	for ifindex, ep := range desired {
		prev, hadPrev := s.cache[ifindex]
		c, err := s.compileCached(ifindex, ep)
		if err != nil {
			errs = append(errs, err)
			if old, ok := cur[ifindex]; ok {
				next[ifindex] = old
			}
			continue
		}
		val := bpf.PolicyEndpoint{Flags: c.Flags, Priority: ep.Priority, Ifindex: ifindex, Hash: c.Hash}
		if old, ok := cur[ifindex]; ok && old.Hash == c.Hash && old.Flags == c.Flags {
			val.SetId = old.SetId
		} else {
			val.SetId = s.allocSet(used)
			used[val.SetId] = true
			if err := s.writeSet(val.SetId, c); err != nil {
				errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.Key(), err))
				if old, ok := cur[ifindex]; ok {
					next[ifindex] = old
				}
				full = true // the half-written set is collected below
				continue
			}
			if old, ok := cur[ifindex]; ok {
				if hadPrev && prev.c.Hash == old.Hash {
					stale = append(stale, staleSet{old.SetId, prev.c})
				} else {
					full = true
				}
			}
		}
		next[ifindex] = val
		if old, ok := cur[ifindex]; !ok || old != val {
			if err := s.m.endpoints.Put(ifindex, val); err != nil {
				errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.Key(), err))
				delete(s.cache, ifindex) // recompile and retry next time
				if ok {
					next[ifindex] = old
				} else {
					delete(next, ifindex)
				}
			}
		}
	}
	for ifindex, old := range cur {
		if _, ok := next[ifindex]; !ok {
			if _, want := desired[ifindex]; want {
				continue // failed above; nothing was written for it
			}
			if err := s.m.endpoints.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("deleting endpoint %d: %w", ifindex, err))
				next[ifindex] = old
				continue
			}
			if c, ok := s.cache[ifindex]; ok && c.c.Hash == old.Hash {
				stale = append(stale, staleSet{old.SetId, c.c})
			} else {
				full = true
			}
			for _, d := range []uint32{uint32(Ingress), uint32(Egress)} {
				_ = s.m.denies.Delete(bpf.PolicyDenyKey{Ifindex: ifindex, Dir: d})
			}
		}
	}
	for ifindex := range s.cache {
		if _, ok := desired[ifindex]; !ok {
			delete(s.cache, ifindex)
		}
	}
	s.eps = next
	errs = append(errs, s.syncIPs(desired, next))
	if full {
		if err := s.collect(next); err != nil {
			errs = append(errs, err)
		} else {
			s.gc = false
		}
	} else {
		for _, st := range stale {
			if err := s.deleteSet(st); err != nil {
				errs = append(errs, err)
				s.gc = true // leftovers are collected by the next full scan
			}
		}
	}
	return errors.Join(errs...)
}

func (s *syncer) writeSet(setID uint32, c compiled) error {
	for _, e := range c.Cidrs {
		mask := bpf.PolicyClasses{W: e.Mask}
		if err := s.m.cidrs.Put(cidrKey(setID, e), mask); err != nil {
			return fmt.Errorf("writing cidr %s: %w", e.Prefix, err)
		}
	}
	for _, e := range c.Ports {
		mask := bpf.PolicyClasses{W: e.Mask}
		if err := s.m.ports.Put(portKey(setID, e), mask); err != nil {
			return fmt.Errorf("writing port entry %d/%d: %w", e.Proto, e.Port, err)
		}
	}
	return nil
}

// syncIPs points every address of a desired endpoint at its current endpoint value.
func (s *syncer) syncIPs(desired map[uint32]Endpoint, next map[uint32]bpf.PolicyEndpoint) error {
	want := map[[16]byte]bpf.PolicyEndpoint{}
	for ifindex, ep := range desired {
		v, ok := next[ifindex]
		if !ok {
			continue
		}
		for _, a := range ep.IPs {
			want[addr16(a)] = v
		}
	}
	var errs []error
	for a, v := range want {
		if old, ok := s.ips[a]; !ok || old != v {
			if err := s.m.endpointIPs.Put(a, v); err != nil {
				errs = append(errs, fmt.Errorf("endpoint IP %s: %w", netip.AddrFrom16(a).Unmap(), err))
				continue
			}
			s.ips[a] = v
		}
	}
	for a := range s.ips {
		if _, ok := want[a]; !ok {
			if err := s.m.endpointIPs.Delete(a); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
				continue
			}
			delete(s.ips, a)
		}
	}
	return errors.Join(errs...)
}

// collect deletes rule sets no endpoint refers to, and deny counters of endpoints that
// are gone.
func (s *syncer) collect(live map[uint32]bpf.PolicyEndpoint) error {
	sets := map[uint32]bool{}
	for _, v := range live {
		sets[v.SetId] = true
	}
	var errs []error
	{
		var k bpf.PolicyCidrKey
		var v bpf.PolicyClasses
		var dead []bpf.PolicyCidrKey
		it := s.m.cidrs.Iterate()
		for it.Next(&k, &v) {
			if !sets[k.SetId] {
				dead = append(dead, k)
			}
		}
		errs = append(errs, it.Err())
		for _, k := range dead {
			if err := s.m.cidrs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
		}
	}
	{
		var k bpf.PolicyPortKey
		var v bpf.PolicyClasses
		var dead []bpf.PolicyPortKey
		it := s.m.ports.Iterate()
		for it.Next(&k, &v) {
			if !sets[k.SetId] {
				dead = append(dead, k)
			}
		}
		errs = append(errs, it.Err())
		for _, k := range dead {
			if err := s.m.ports.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
		}
	}
	{
		var k bpf.PolicyDenyKey
		var v []uint64
		var dead []bpf.PolicyDenyKey
		it := s.m.denies.Iterate()
		for it.Next(&k, &v) {
			if _, ok := live[k.Ifindex]; !ok {
				dead = append(dead, k)
			}
		}
		errs = append(errs, it.Err())
		for _, k := range dead {
			if err := s.m.denies.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// setDeferred makes the egress-defer trie hold exactly prefixes (the Service CIDRs).
func (s *syncer) setDeferred(prefixes []netip.Prefix) error {
	want := map[bpf.PolicyDeferKey]bool{}
	for _, p := range prefixes {
		p16 := to16(p)
		want[bpf.PolicyDeferKey{Prefixlen: uint32(p16.Bits()), Addr: p16.Addr().As16()}] = true
	}
	var k bpf.PolicyDeferKey
	var v uint8
	var dead []bpf.PolicyDeferKey
	it := s.m.egressDefer.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			dead = append(dead, k)
		}
		delete(want, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading egress-defer map: %w", err)
	}
	for _, k := range dead {
		if err := s.m.egressDefer.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	for k := range want {
		if err := s.m.egressDefer.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("writing egress-defer %v: %w", k, err)
		}
	}
	return nil
}

// remove deletes endpoints and addresses at once (CNI DEL) and collects their rule sets.
func (s *syncer) remove(ifindexes []uint32, addrs [][16]byte) error {
	var errs []error
	full := false
	var stale []staleSet
	for _, i := range ifindexes {
		old, known := s.eps[i]
		if err := s.m.endpoints.Delete(i); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("deleting endpoint %d: %w", i, err))
			continue
		}
		if c, ok := s.cache[i]; ok && known && c.c.Hash == old.Hash {
			stale = append(stale, staleSet{old.SetId, c.c})
		} else {
			full = true
		}
		for _, d := range []uint32{uint32(Ingress), uint32(Egress)} {
			_ = s.m.denies.Delete(bpf.PolicyDenyKey{Ifindex: i, Dir: d})
		}
		delete(s.eps, i)
		delete(s.cache, i)
	}
	for _, a := range addrs {
		if err := s.m.endpointIPs.Delete(a); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
			continue
		}
		delete(s.ips, a)
	}
	if full || s.gc {
		return errors.Join(append(errs, s.collect(s.eps))...)
	}
	for _, st := range stale {
		errs = append(errs, s.deleteSet(st))
	}
	return errors.Join(errs...)
}

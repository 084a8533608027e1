package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

// The host-local IPAM done in this process. It reads the same "ipam" section as the
// host-local plugin and keeps its state in the same data dir through the same on-disk
// store (disk.Store: one file per address holding "<container id>\r\n<ifname>", a
// last_reserved_ip.<range set> file per range set, one flock for the directory), so the
// host-local binary and this code can allocate from one range side by side.
//
// It does not use the plugin's allocator package: that package links
// containernetworking/plugins/pkg/ip and with it sigs.k8s.io/knftables, whose package init
// (eleven regexps) ran on every CNI call, and it holds the directory lock while it reads
// every reservation file looking for the container's earlier addresses. Here that scan
// runs before the lock: only one ADD runs per container at a time (the runtime serialises
// a sandbox's operations), so no other process can create a file with this container's
// id meanwhile.

// addrRange is one range of a range set, canonical: every address is set and unmapped.
type addrRange struct {
	Subnet     netip.Prefix
	Start, End netip.Addr // inclusive
	Gateway    netip.Addr
}

func (r addrRange) contains(a netip.Addr) bool {
	return r.Subnet.Contains(a) && a.Compare(r.Start) >= 0 && a.Compare(r.End) <= 0
}

func (r addrRange) overlaps(o addrRange) bool {
	if r.Start.Is4() != o.Start.Is4() {
		return false
	}
	return r.Start.Compare(o.End) <= 0 && o.Start.Compare(r.End) <= 0
}

func (r addrRange) String() string { return r.Start.String() + "-" + r.End.String() }

// rangeSet is a list of ranges of one address family; one address is allocated per set.
type rangeSet []addrRange

func (s rangeSet) rangeFor(a netip.Addr) (addrRange, bool) {
	for _, r := range s {
		if r.contains(a) {
			return r, true
		}
	}
	return addrRange{}, false
}

func (s rangeSet) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// hostLocalConf is a host-local "ipam" section, parsed and checked.
type hostLocalConf struct {
	Network   string // the network name: the data dir's subdirectory
	DataDir   string // as configured; "" means the host-local default
	Routes    []*types.Route
	Ranges    []rangeSet
	Requested []netip.Addr // addresses asked for by CNI_ARGS IP=, args.cni.ips, runtimeConfig.ips
}

// defaultHostLocalDir is where host-local keeps its state when dataDir is not set.
const defaultHostLocalDir = "/var/lib/cni/networks"

func (c *hostLocalConf) dir() string {
	d := c.DataDir
	if d == "" {
		d = defaultHostLocalDir
	}
	return filepath.Join(d, c.Network)
}

// rangeJSON is one range as host-local's configuration spells it.
type rangeJSON struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart,omitempty"`
	RangeEnd   string `json:"rangeEnd,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
}

// hostLocalJSON is the part of a network configuration host-local reads.
type hostLocalJSON struct {
	Name string `json:"name"`
	IPAM *struct {
		rangeJSON                // the single-range form: subnet etc. directly in ipam
		Routes    []*types.Route `json:"routes"`
		DataDir   string         `json:"dataDir"`
		Ranges    [][]rangeJSON  `json:"ranges"`
	} `json:"ipam"`
	RuntimeConfig struct {
		IPRanges [][]rangeJSON `json:"ipRanges"`
		IPs      []string      `json:"ips"`
	} `json:"runtimeConfig"`
	Args *struct {
		CNI *struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
}

// parseHostLocal reads the host-local configuration from a network configuration and
// the IP= key of CNI_ARGS (ipArg, may be empty), with host-local's rules: ranges from
// runtimeConfig.ipRanges, then the single-range form, then "ranges"; each range defaults
// its gateway and start to the subnet's first address and its end to the last (the last
// but one for IPv4: the broadcast address); ranges must not overlap.
func parseHostLocal(raw []byte, ipArg string) (*hostLocalConf, error) {
	var j hostLocalJSON
	if err := json.Unmarshal(raw, &j); err != nil {
		return nil, err
	}
	if j.IPAM == nil {
		return nil, errors.New(`no "ipam" section`)
	}
	c := &hostLocalConf{Network: j.Name, DataDir: j.IPAM.DataDir, Routes: j.IPAM.Routes}
	var sets [][]rangeJSON
	sets = append(sets, j.RuntimeConfig.IPRanges...)
	if j.IPAM.Subnet != "" {
		sets = append(sets, []rangeJSON{j.IPAM.rangeJSON})
	}
	sets = append(sets, j.IPAM.Ranges...)
	if len(sets) == 0 {
		return nil, errors.New(`no address ranges: set "ranges" (or "subnet")`)
	}
	for i, js := range sets {
		if len(js) == 0 {
			return nil, fmt.Errorf("range set %d is empty", i)
		}
		var set rangeSet
		for k, jr := range js {
			r, err := parseRange(jr)
			if err != nil {
				return nil, fmt.Errorf("range set %d, range %d: %w", i, k, err)
			}
			if len(set) > 0 && set[0].Start.Is4() != r.Start.Is4() {
				return nil, fmt.Errorf("range set %d mixes IPv4 and IPv6 ranges", i)
			}
			set = append(set, r)
		}
		c.Ranges = append(c.Ranges, set)
	}
	// No two ranges anywhere may overlap: an address would belong to two sets.
	var all []addrRange
	for _, s := range c.Ranges {
		all = append(all, s...)
	}
	for i := range all {
		for k := i + 1; k < len(all); k++ {
			if all[i].overlaps(all[k]) {
				return nil, fmt.Errorf("ranges %s and %s overlap", all[i], all[k])
			}
		}
	}
	var req []string
	if ipArg != "" {
		req = append(req, strings.TrimPrefix(ipArg, "IP="))
	}
	if j.Args != nil && j.Args.CNI != nil {
		req = append(req, j.Args.CNI.IPs...)
	}
	req = append(req, j.RuntimeConfig.IPs...)
	for _, s := range req {
		a, err := parseIPOrCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("requested address %q: %w", s, err)
		}
		c.Requested = append(c.Requested, a)
	}
	return c, nil
}

// parseIPOrCIDR accepts "10.0.0.5" and "10.0.0.5/24" (host-local accepts both).
func parseIPOrCIDR(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, errors.New("not an IP address")
	}
	return a.Unmap(), nil
}

func parseRange(j rangeJSON) (addrRange, error) {
	p, err := netip.ParsePrefix(j.Subnet)
	if err != nil {
		return addrRange{}, fmt.Errorf("subnet %q is not a CIDR", j.Subnet)
	}
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	if p.Masked() != p {
		return addrRange{}, fmt.Errorf("subnet %s has host bits set: the network address is %s", p, p.Masked().Addr())
	}
	if p.Bits() > p.Addr().BitLen()-2 {
		return addrRange{}, fmt.Errorf("subnet %s is too small to allocate from", p)
	}
	r := addrRange{Subnet: p}
	first := p.Addr().Next()
	field := func(name, v string, def netip.Addr) (netip.Addr, error) {
		if v == "" {
			return def, nil
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("%s %q is not an IP address", name, v)
		}
		a = a.Unmap()
		if !p.Contains(a) {
			return netip.Addr{}, fmt.Errorf("%s %s is not in subnet %s", name, a, p)
		}
		return a, nil
	}
	if r.Gateway, err = field("gateway", j.Gateway, first); err != nil {
		return addrRange{}, err
	}
	if r.Start, err = field("rangeStart", j.RangeStart, first); err != nil {
		return addrRange{}, err
	}
	if r.End, err = field("rangeEnd", j.RangeEnd, lastAddr(p)); err != nil {
		return addrRange{}, err
	}
	if r.Start.Compare(r.End) > 0 {
		return addrRange{}, fmt.Errorf("rangeStart %s is after rangeEnd %s", r.Start, r.End)
	}
	return r, nil
}

// lastAddr is the last allocatable address of a subnet: the last one for IPv6, the one
// before the broadcast address for IPv4.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	hostBits := p.Addr().BitLen() - p.Bits()
	for i := len(b) - 1; hostBits > 0; i-- {
		n := min(hostBits, 8)
		b[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	a, _ := netip.AddrFromSlice(b)
	if a.Is4() {
		a = a.Prev()
	}
	return a
}

// nextIn returns the address that follows a in the set's allocation order (the next
// address of its range, or the start of the next range, wrapping around).
func (s rangeSet) nextIn(a netip.Addr) netip.Addr {
	for i, r := range s {
		if !r.contains(a) {
			continue
		}
		if a != r.End {
			return a.Next()
		}
		return s[(i+1)%len(s)].Start
	}
	return s[0].Start
}

// hostLocalIDs are the keys a reservation file may hold for an attachment: the current
// "<id>\r\n<ifname>" and the id alone (files written by older host-local versions).
func hostLocalIDs(id, ifname string) (string, string) {
	id = strings.TrimSpace(id)
	return id + disk.LineBreak + ifname, id
}

// reservedBy lists the addresses of the data dir reserved for the attachment. It reads
// without the lock (see the file comment).
func reservedBy(dir, id, ifname string) ([]netip.Addr, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	key, old := hostLocalIDs(id, ifname)
	var out []netip.Addr
	for _, e := range ents {
		a, err := netip.ParseAddr(e.Name())
		if err != nil || e.IsDir() {
			continue // the lock, last_reserved_ip.N, temporary files
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // released meanwhile
		}
		if v := strings.TrimSpace(string(b)); v == key || v == old {
			out = append(out, a.Unmap())
		}
	}
	return out, nil
}

// allocate reserves one address per range set for the attachment, under the data dir's
// lock for the whole reservation, and returns them in range set order.
func (c *hostLocalConf) allocate(s *disk.Store, id, ifname string) ([]*current.IPConfig, error) {
	have, err := reservedBy(c.dir(), id, ifname)
	if err != nil {
		return nil, err
	}
	requested := map[netip.Addr]bool{}
	for _, a := range c.Requested {
		requested[a] = true
	}
	if err := s.Lock(); err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	defer s.Unlock()
	var out []*current.IPConfig
	var taken []netip.Addr
	fail := func(err error) ([]*current.IPConfig, error) {
		// Undo this call's reservations; other attachments' files are untouched.
		for _, a := range taken {
			os.Remove(disk.GetEscapedPath(c.dir(), a.String()))
		}
		return nil, err
	}
	for i, set := range c.Ranges {
		for _, a := range have {
			if _, ok := set.rangeFor(a); ok {
				return fail(fmt.Errorf("%s is already allocated to container %s interface %s (range set %d): duplicate allocation is not allowed", a, id, ifname, i))
			}
		}
		var want netip.Addr
		for a := range requested {
			if _, ok := set.rangeFor(a); ok {
				want = a
				delete(requested, a)
				break
			}
		}
		rangeID := fmt.Sprint(i)
		var got netip.Addr
		if want.IsValid() {
			r, _ := set.rangeFor(want)
			if want == r.Gateway {
				return fail(fmt.Errorf("requested address %s is the gateway of range set %d", want, i))
			}
			ok, err := s.Reserve(id, ifname, net.IP(want.AsSlice()), rangeID)
			if err != nil {
				return fail(err)
			}
			if !ok {
				return fail(fmt.Errorf("requested address %s is not available in range set %d (%s)", want, i, set))
			}
			got = want
		} else {
			// Round robin: start after the last address reserved from this set.
			start := set[0].Start
			if last, err := s.LastReservedIP(rangeID); err == nil {
				if la, ok := netip.AddrFromSlice(last); ok {
					if _, in := set.rangeFor(la.Unmap()); in {
						start = set.nextIn(la.Unmap())
					}
				}
			}
			a := start
			for {
				r, _ := set.rangeFor(a)
				if a != r.Gateway {
					ok, err := s.Reserve(id, ifname, net.IP(a.AsSlice()), rangeID)
					if err != nil {
						return fail(err)
					}
					if ok {
						got = a
						break
					}
				}
				if a = set.nextIn(a); a == start {
					break
				}
			}
			if !got.IsValid() {
				return fail(fmt.Errorf("no address available in range set %d (%s)", i, set))
			}
		}
		taken = append(taken, got)
		r, _ := set.rangeFor(got)
		out = append(out, &current.IPConfig{
			Address: net.IPNet{IP: got.AsSlice(), Mask: net.CIDRMask(r.Subnet.Bits(), got.BitLen())},
			Gateway: r.Gateway.AsSlice(),
		})
	}
	if len(requested) != 0 {
		var ips []string
		for a := range requested {
			ips = append(ips, a.String())
		}
		return fail(fmt.Errorf("requested addresses %s are in no configured range", strings.Join(ips, ", ")))
	}
	return out, nil
}

// release removes the attachment's reservations in every range set. The data dir is
// scanned before the lock (as in allocate); under the lock each file found is read again
// and removed only if it still names the attachment, so an address released and handed
// to another container meanwhile (by GC) stays reserved.
func (c *hostLocalConf) release(s *disk.Store, id, ifname string) error {
	mine, err := reservedBy(c.dir(), id, ifname)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if len(mine) == 0 {
		return nil
	}
	if err := s.Lock(); err != nil {
		return fmt.Errorf("lock data dir: %w", err)
	}
	defer s.Unlock()
	key, old := hostLocalIDs(id, ifname)
	var errs []error
	for _, a := range mine {
		f := disk.GetEscapedPath(c.dir(), a.String())
		b, err := os.ReadFile(f)
		if err != nil {
			continue // gone already
		}
		if v := strings.TrimSpace(string(b)); v != key && v != old {
			continue
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

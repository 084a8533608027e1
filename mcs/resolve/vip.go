package resolve

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/big"
	"net/netip"
)

// DefaultClusterSetIPRange is the default range ClusterSetIPs are taken from. It lies
// outside Kubernetes' default Service range (10.96.0.0/12, i.e. 10.96.0.0-10.111.255.255),
// the usual pod ranges (10.244.0.0/16 and neighbours) and the RFC 6598 shared space.
const DefaultClusterSetIPRange = "10.112.0.0/16"

// ErrRangeFull means every address of the range is taken.
var ErrRangeFull = errors.New("clusterset IP range exhausted")

// AllocateVIP picks the ClusterSetIP of namespace/name in r: the address at a hash of the
// name (so independent clusters pick the same one), or, when taken(addr) reports it used
// by another import, the next free one after it (wrapping). The network and broadcast
// addresses of an IPv4 range are never used.
func AllocateVIP(r netip.Prefix, namespace, name string, taken func(netip.Addr) bool) (netip.Addr, error) {
	r = r.Masked()
	if !r.IsValid() {
		return netip.Addr{}, errors.New("invalid clusterset IP range")
	}
	hostBits := r.Addr().BitLen() - r.Bits()
	if hostBits > 63 {
		hostBits = 63 // an IPv6 /64 has more addresses than any cluster needs
	}
	size := uint64(1) << hostBits
	first, usable := uint64(0), size
	if r.Addr().Is4() && hostBits >= 2 {
		first, usable = 1, size-2
	}
	if usable == 0 {
		return netip.Addr{}, fmt.Errorf("clusterset IP range %s has no usable address", r)
	}
	h := fnv.New64a()
	h.Write([]byte(namespace + "/" + name))
	start := h.Sum64() % usable
	// Probe at most a bounded number of addresses: a range this full needs an operator.
	limit := min(usable, 1<<20)
	for i := range limit {
		a := addrAt(r.Addr(), first+(start+i)%usable)
		if taken == nil || !taken(a) {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: %s", ErrRangeFull, r)
}

// addrAt is base+off.
func addrAt(base netip.Addr, off uint64) netip.Addr {
	b := base.AsSlice()
	n := new(big.Int).SetBytes(b)
	n.Add(n, new(big.Int).SetUint64(off))
	out := make([]byte, len(b))
	n.FillBytes(out)
	a, _ := netip.AddrFromSlice(out)
	return a
}

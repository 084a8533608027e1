package nft

import (
	"net/netip"
	"testing"

	"github.com/patronus/patronus/policy"
)

func inRanges(rs []addrRange, a netip.Addr) bool {
	for _, r := range rs {
		if !a.Less(r.lo) && !r.hi.Less(a) {
			return true
		}
	}
	return false
}

func TestPeerRanges(t *testing.T) {
	p := policy.Peer{Prefix: netip.MustParsePrefix("10.1.0.0/16"), Except: []netip.Prefix{
		netip.MustParsePrefix("10.1.2.0/24"), netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.1.255.255/32")}}
	rs := mergeRanges(peerRanges(p, false))
	for _, tc := range []struct {
		a    string
		want bool
	}{
		{"10.1.0.5", false}, {"10.1.1.0", true}, {"10.1.1.255", true}, {"10.1.2.9", false}, {"10.1.3.0", true},
		{"10.1.255.254", true}, {"10.1.255.255", false}, {"10.2.0.0", false}, {"10.0.255.255", false},
	} {
		if got := inRanges(rs, netip.MustParseAddr(tc.a)); got != tc.want {
			t.Errorf("%s: got %v want %v (ranges %v)", tc.a, got, tc.want, rs)
		}
	}
	if len(peerRanges(p, true)) != 0 {
		t.Error("IPv4 peer gave IPv6 ranges")
	}
	all := mergeRanges(append(peerRanges(policy.Peer{Prefix: netip.MustParsePrefix("0.0.0.0/0")}, false),
		peerRanges(policy.Peer{Prefix: netip.MustParsePrefix("10.0.0.0/8")}, false)...))
	if len(all) != 1 {
		t.Errorf("overlapping ranges not merged: %v", all)
	}
	if els := addrElements(all); len(els) != 1 {
		t.Errorf("0.0.0.0/0 should be one open-ended element, got %d", len(els))
	}
}

func TestPortElements(t *testing.T) {
	els := portElements([]portRange{{80, 80}, {81, 90}, {100, 200}, {150, 65535}})
	// [80,90] and [100,65535]: start, end(91), start(100), no end.
	if len(els) != 3 || !els[1].IntervalEnd || els[2].IntervalEnd {
		t.Fatalf("elements: %+v", els)
	}
}

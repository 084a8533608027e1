package nodenet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
)

func peers(n int) []Peer {
	out := make([]Peer, n)
	for i := range n {
		out[i] = Peer{Name: fmt.Sprintf("node-%04d", i), Addr: netip.AddrFrom4([4]byte{192, 168, byte(i / 250), byte(2 + i%250)}),
			Blocks: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24)}}
	}
	return out
}

// BenchmarkCompute: the plan for 1,000 peers (every reconcile computes it).
func BenchmarkCompute(b *testing.B) {
	ps := peers(1000)
	local := Local{Name: "self", Addr: netip.MustParseAddr("192.168.0.1"), Net: netip.MustParsePrefix("192.168.0.0/16"), Dev: "eth0", Block: netip.MustParsePrefix("10.0.0.0/24")}
	for b.Loop() {
		if p := Compute(local, ps); len(p.Routes) != 1000 {
			b.Fatal(len(p.Routes))
		}
	}
}

// benchNS makes a namespace with eth0 (a veth) at 192.168.0.1/16.
func benchNS(b *testing.B) string {
	if os.Geteuid() != 0 {
		b.Skip("needs root: creates a network namespace")
	}
	buf := make([]byte, 4)
	rand.Read(buf)
	name := "pt-nnb-" + hex.EncodeToString(buf)
	n := enforcetest.NewNS(b, name)
	nh, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()))
	if err != nil {
		b.Fatal(err)
	}
	defer nh.Close()
	if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}); err != nil {
		b.Fatal(err)
	}
	for _, n := range []string{"eth0", "eth1"} {
		l, _ := nh.LinkByName(n)
		nh.LinkSetUp(l)
	}
	l, _ := nh.LinkByName("eth0")
	if err := nh.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 168, 0, 1), Mask: net.CIDRMask(16, 32)}}); err != nil {
		b.Fatal(err)
	}
	return "/var/run/netns/" + name
}

// BenchmarkApply: the periodic resync with 1,000 peer routes already in place (a no-op:
// one route dump and a comparison), next to the first apply that installs them.
func BenchmarkApply(b *testing.B) {
	path := benchNS(b)
	dp, err := OpenDatapath(path)
	if err != nil {
		b.Fatal(err)
	}
	defer dp.Close()
	local := Local{Name: "self", Addr: netip.MustParseAddr("192.168.0.1"), Net: netip.MustParsePrefix("192.168.0.0/16"), Dev: "eth0", Block: netip.MustParsePrefix("10.0.0.0/24")}
	plan := Compute(local, peers(1000))
	empty := Compute(local, nil)
	b.Run("install-1000", func(b *testing.B) {
		for b.Loop() {
			if err := dp.Apply(local, plan); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := dp.Apply(local, empty); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	if err := dp.Apply(local, plan); err != nil {
		b.Fatal(err)
	}
	b.Run("resync-noop-1000", func(b *testing.B) {
		for b.Loop() {
			if err := dp.Apply(local, plan); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("masquerade-noop", func(b *testing.B) {
		m := Masquerade{Sources: []netip.Prefix{local.Block}, Cluster: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
		if err := dp.SetMasquerade(m); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := dp.SetMasquerade(m); err != nil {
				b.Fatal(err)
			}
		}
	})
}

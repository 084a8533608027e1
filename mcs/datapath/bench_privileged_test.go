package datapath

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func benchServices(n int, flip bool) []Service {
	out := make([]Service, 0, n)
	for i := range n {
		s := Service{Name: fmt.Sprintf("ns/svc-%d", i), VIP: netip.AddrFrom4([4]byte{10, 112, byte(i >> 8), byte(i)}),
			AffinityTimeout: time.Duration(i%2) * time.Minute}
		var eps []Endpoint
		for j := range 3 {
			eps = append(eps, Endpoint{Addr: netip.AddrFrom4([4]byte{10, 245, byte(i >> 6), byte(i%64*4 + j)}), Port: 8080,
				Ready: !(flip && j == 0)})
		}
		s.Ports = []Port{{Protocol: "TCP", Port: 80, Endpoints: eps}}
		out = append(out, s)
	}
	return out
}

// BenchmarkSet measures Set for n services of 3 endpoints, half with ClientIP affinity:
// "changed" changes every service each iteration, "one-changed" one service (the usual
// endpoint update), "unchanged" is the no-op path taken on resyncs.
func BenchmarkSet(b *testing.B) {
	for _, n := range []int{10, 100, 500} {
		b.Run(fmt.Sprintf("services=%d/changed", n), func(b *testing.B) {
			path, _ := testNS(b)
			p, err := New(Options{NetNS: path})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			a, c := benchServices(n, false), benchServices(n, true)
			i := 0
			for b.Loop() {
				s := a
				if i%2 == 1 {
					s = c
				}
				i++
				if err := p.Set(s); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("services=%d/one-changed", n), func(b *testing.B) {
			path, _ := testNS(b)
			p, err := New(Options{NetNS: path})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			a := benchServices(n, false)
			c := append([]Service(nil), a...)
			c[0] = benchServices(1, true)[0]
			if err := p.Set(a); err != nil {
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				s := a
				if i%2 == 0 {
					s = c
				}
				i++
				if err := p.Set(s); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("services=%d/unchanged", n), func(b *testing.B) {
			path, _ := testNS(b)
			p, err := New(Options{NetNS: path})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			s := benchServices(n, false)
			if err := p.Set(s); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if err := p.Set(s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

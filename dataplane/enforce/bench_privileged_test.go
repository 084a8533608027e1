package enforce

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/patronus/patronus/policy"
)

// benchEndpoint: 1,000 ingress rules, one /32 peer each on TCP+UDP 5201, the matching
// peer last (the same shape as scripts/bench/policy.sh).
func benchEndpoint(n int) Endpoint {
	ports := []policy.PortRange{{Protocol: policy.TCP, First: 5201, Last: 5201}, {Protocol: policy.UDP, First: 5201, Last: 5201}}
	var rules []policy.Rule
	for i := 0; i < n-1; i++ {
		rules = append(rules, policy.Rule{Peers: []policy.Peer{{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}), 32)}}, Ports: ports})
	}
	rules = append(rules, policy.Rule{Peers: []policy.Peer{{Prefix: pfx("10.251.0.11/32")}}, Ports: ports})
	return Endpoint{EndpointPolicy: policy.EndpointPolicy{Namespace: "bench", Pod: "b", IPs: []netip.Addr{netip.MustParseAddr("10.251.0.12")},
		IngressIsolated: true, Ingress: rules}, HostVeth: "lo"}
}

// BenchmarkToPod measures the program's cost per packet with BPF_PROG_TEST_RUN:
// "new" flows take the policy path (two LPM lookups + conntrack insert), "established"
// ones a conntrack hit, "not an endpoint" is the floor (one hash lookup).
func BenchmarkToPod(b *testing.B) {
	requireRoot(b)
	for _, tc := range []struct {
		name     string
		endpoint bool
		syn      bool
	}{{"not-an-endpoint", false, false}, {"established", true, false}, {"new-flow-1000-rules", true, true}} {
		b.Run(tc.name, func(b *testing.B) {
			objs := loadUnpinned(b)
			s, err := newSyncer(mapsOf(objs))
			if err != nil {
				b.Fatal(err)
			}
			desired := map[uint32]Endpoint{}
			if tc.endpoint {
				desired[lo] = benchEndpoint(1000)
			}
			if err := s.sync(desired); err != nil {
				b.Fatal(err)
			}
			// A SYN skips conntrack, so every run takes the policy path.
			pkt := craft(pktSpec{"10.251.0.11", "10.251.0.12", 17, 40000, 5201, false})
			if tc.syn {
				pkt = craft(pktSpec{"10.251.0.11", "10.251.0.12", 6, 40000, 5201, true})
			}
			ret, err := objs.ToPod.Run(&ebpf.RunOptions{Data: pkt})
			if err != nil || ret != actAllow {
				b.Fatalf("warm-up run: %d %v", int32(ret), err)
			}
			b.ResetTimer()
			ret, d, err := objs.ToPod.Benchmark(pkt, b.N, b.ResetTimer)
			if err != nil || ret != actAllow {
				b.Fatalf("run: %d %v", int32(ret), err)
			}
			b.ReportMetric(float64(d.Nanoseconds()), "ns/packet")
		})
	}
}

// scaleEndpoints: n endpoints, each ingress-isolated with 6 rules (a few /32 peers,
// a CIDR with except, port ranges): about the compiled shape of the issue's
// 1,000 pods × 500 policies.
func scaleEndpoints(n int, variant int) map[uint32]Endpoint {
	out := map[uint32]Endpoint{}
	for i := 0; i < n; i++ {
		var rules []policy.Rule
		for r := 0; r < 5; r++ {
			rules = append(rules, policy.Rule{
				Peers: []policy.Peer{{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(r), byte(i + variant)}), 32)}},
				Ports: []policy.PortRange{{Protocol: policy.TCP, First: uint16(8000 + r), Last: uint16(8000 + r)}},
			})
		}
		rules = append(rules, policy.Rule{
			Peers: []policy.Peer{{Prefix: pfx("172.16.0.0/12"), Except: []netip.Prefix{pfx("172.16.5.0/24")}}},
			Ports: []policy.PortRange{{Protocol: policy.TCP, First: 9000, Last: 9100}},
		})
		out[uint32(1000+i)] = Endpoint{EndpointPolicy: policy.EndpointPolicy{
			Namespace: "ns", Pod: "p" + string(rune('a'+i%26)) + netip.AddrFrom4([4]byte{0, 0, byte(i >> 8), byte(i)}).String(),
			IPs:             []netip.Addr{netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})},
			IngressIsolated: true, Ingress: rules}}
	}
	return out
}

// BenchmarkSync measures writing the maps for 1,000 endpoints: the full initial load,
// a Set where nothing changed, and a Set where one endpoint's rules changed (the
// datapath share of "policy created → enforced").
func BenchmarkSync(b *testing.B) {
	requireRoot(b)
	const n = 1000
	base := scaleEndpoints(n, 0)
	b.Run("initial-1000-endpoints", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			objs := loadUnpinned(b)
			s, _ := newSyncer(mapsOf(objs))
			b.StartTimer()
			if err := s.sync(base); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			objs.Close()
			b.StartTimer()
		}
	})
	objs := loadUnpinned(b)
	s, _ := newSyncer(mapsOf(objs))
	if err := s.sync(base); err != nil {
		b.Fatal(err)
	}
	b.Run("unchanged-1000-endpoints", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := s.sync(base); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("one-endpoint-changed-of-1000", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			d := map[uint32]Endpoint{}
			for k, v := range base {
				d[k] = v
			}
			ep := d[1000]
			ep.Ingress = append([]policy.Rule(nil), ep.Ingress...)
			ep.Ingress[0].Ports = []policy.PortRange{{Protocol: policy.TCP, First: uint16(100 + i%1000), Last: uint16(100 + i%1000)}}
			d[1000] = ep
			if err := s.sync(d); err != nil {
				b.Fatal(err)
			}
		}
	})
}

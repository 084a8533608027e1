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

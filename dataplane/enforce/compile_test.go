package enforce

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/patronus/patronus/policy"
)

func TestPortBlocks(t *testing.T) {
	for _, r := range [][2]uint16{{1, 1}, {80, 80}, {8000, 8100}, {1, 65535}, {0, 65535}, {1024, 2047}, {65535, 65535}, {3, 1000}} {
		blocks := portBlocks(r[0], r[1])
		if len(blocks) > 32 {
			t.Errorf("%v: %d blocks", r, len(blocks))
		}
		next := int(r[0])
		for _, b := range blocks {
			size := 1 << (16 - b[1])
			if b[0] != next || b[0]%size != 0 {
				t.Fatalf("%v: block %v not aligned or not contiguous (want start %d)", r, b, next)
			}
			next += size
		}
		if next != int(r[1])+1 {
			t.Errorf("%v: blocks end at %d", r, next-1)
		}
	}
}

// simulate answers like the BPF program: longest matching CIDR entry, longest matching
// port entry, masks intersect.
func simulate(c compiled, dir Direction, peer netip.Addr, proto uint8, port uint16) bool {
	a16 := netip.AddrFrom16(peer.As16())
	var cm, pm *classMask
	best := -1
	for i, e := range c.Cidrs {
		if e.Dir == dir && e.Prefix.Contains(a16) && e.Prefix.Bits() > best {
			best, cm = e.Prefix.Bits(), &c.Cidrs[i].Mask
		}
	}
	best = -1
	key := portEntry{Bits: 24, Proto: proto, Port: port}
	for i, e := range c.Ports {
		if e.Dir == dir && portCovers(e, key) && e.Bits > best {
			best, pm = e.Bits, &c.Ports[i].Mask
		}
	}
	if cm == nil || pm == nil {
		return false
	}
	for i := range cm {
		if cm[i]&pm[i] != 0 {
			return true
		}
	}
	return false
}

// direct evaluates the rules as NetworkPolicy defines them.
func direct(rules []policy.Rule, peer netip.Addr, proto uint8, port uint16) bool {
	for _, r := range rules {
		peerOK := len(r.Peers) == 0
		for _, p := range r.Peers {
			if p.Prefix.Contains(peer) {
				ex := false
				for _, x := range p.Except {
					if x.Contains(peer) {
						ex = true
					}
				}
				if !ex {
					peerOK = true
				}
			}
		}
		portOK := len(r.Ports) == 0
		for _, pr := range r.Ports {
			if uint8(pr.Protocol) == proto && ((pr.First == 0 && pr.Last == 0) || (port >= pr.First && port <= max(pr.First, pr.Last))) {
				portOK = true
			}
		}
		if peerOK && portOK {
			return true
		}
	}
	return false
}

func TestCompileMatchesDefinition(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	prefixes := []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.128/25", "10.1.2.200/32", "10.2.0.0/16", "0.0.0.0/0", "192.168.0.0/16"}
	protos := []policy.Protocol{policy.TCP, policy.UDP, policy.SCTP}
	for iter := 0; iter < 200; iter++ {
		var rules []policy.Rule
		for n := rng.IntN(6); n >= 0; n-- {
			var r policy.Rule
			for k := rng.IntN(3); k > 0; k-- {
				p := policy.Peer{Prefix: netip.MustParsePrefix(prefixes[rng.IntN(len(prefixes))])}
				for _, x := range prefixes {
					xp := netip.MustParsePrefix(x)
					if xp.Bits() > p.Prefix.Bits() && p.Prefix.Contains(xp.Addr()) && rng.IntN(3) == 0 {
						p.Except = append(p.Except, xp)
					}
				}
				r.Peers = append(r.Peers, p)
			}
			for k := rng.IntN(3); k > 0; k-- {
				first := uint16(rng.IntN(100))
				pr := policy.PortRange{Protocol: protos[rng.IntN(3)], First: first, Last: first + uint16(rng.IntN(20))}
				if rng.IntN(5) == 0 {
					pr.First, pr.Last = 0, 0
				}
				r.Ports = append(r.Ports, pr)
			}
			rules = append(rules, r)
		}
		ep := Endpoint{EndpointPolicy: policy.EndpointPolicy{IngressIsolated: true, Ingress: rules}}
		c, err := compile(ep)
		if err != nil {
			t.Fatal(err)
		}
		for probe := 0; probe < 300; probe++ {
			var a netip.Addr
			switch rng.IntN(4) {
			case 0:
				a = netip.AddrFrom4([4]byte{10, 1, 2, byte(rng.IntN(256))})
			case 1:
				a = netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(4)), byte(rng.IntN(256))})
			case 2:
				a = netip.AddrFrom4([4]byte{192, 168, 1, 1})
			default:
				a = netip.AddrFrom4([4]byte{byte(rng.IntN(256)), 1, 1, 1})
			}
			proto := uint8(protos[rng.IntN(3)])
			port := uint16(rng.IntN(130))
			if got, want := simulate(c, Ingress, a, proto, port), direct(rules, a, proto, port); got != want {
				t.Fatalf("rules %+v\npeer %s proto %d port %d: compiled says %v, definition %v", rules, a, proto, port, got, want)
			}
		}
	}
}

func TestTooManyClasses(t *testing.T) {
	var rules []policy.Rule
	for i := 0; i <= MaxClasses; i++ {
		rules = append(rules, policy.Rule{
			Peers: []policy.Peer{{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32)}},
			Ports: []policy.PortRange{{Protocol: policy.TCP, First: uint16(1000 + i), Last: uint16(1000 + i)}},
		})
	}
	_, err := compile(Endpoint{EndpointPolicy: policy.EndpointPolicy{IngressIsolated: true, Ingress: rules}})
	if err == nil {
		t.Fatal("no error for more than MaxClasses classes")
	}
	// The same number of rules sharing one port set is one class.
	for i := range rules {
		rules[i].Ports = []policy.PortRange{{Protocol: policy.TCP, First: 80, Last: 80}}
	}
	if _, err := compile(Endpoint{EndpointPolicy: policy.EndpointPolicy{IngressIsolated: true, Ingress: rules}}); err != nil {
		t.Fatal(err)
	}
}

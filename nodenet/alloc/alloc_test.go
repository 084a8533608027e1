package alloc

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestBlock(t *testing.T) {
	for _, tc := range []struct {
		cluster string
		bits, i int
		want    string
		err     bool
	}{
		{"10.244.0.0/16", 24, 0, "10.244.0.0/24", false},
		{"10.244.0.0/16", 24, 1, "10.244.1.0/24", false},
		{"10.244.0.0/16", 24, 255, "10.244.255.0/24", false},
		{"10.244.0.0/16", 24, 256, "", true},
		{"10.244.0.0/16", 26, 5, "10.244.1.64/26", false},
		{"10.244.7.9/16", 24, 2, "10.244.2.0/24", false}, // unmasked cluster CIDR
		{"fd00:10::/48", 64, 3, "fd00:10:0:3::/64", false},
		{"10.0.0.0/8", 24, 65536, "", true},
		{"10.0.0.0/8", 24, 65535, "10.255.255.0/24", false},
	} {
		got, err := Block(pfx(tc.cluster), tc.bits, tc.i)
		if (err != nil) != tc.err || (!tc.err && got.String() != tc.want) {
			t.Errorf("Block(%s,/%d,%d) = %v, %v; want %s (err %v)", tc.cluster, tc.bits, tc.i, got, err, tc.want, tc.err)
		}
	}
}

func TestValidateAndCount(t *testing.T) {
	for _, tc := range []struct {
		cluster string
		bits    int
		count   int
		ok      bool
	}{
		{"10.244.0.0/16", 24, 256, true},
		{"10.244.0.0/16", 16, 1, true},
		{"10.244.0.0/16", 15, 0, false},
		{"10.244.0.0/16", 31, 1 << 15, false},
		{"10.244.0.0/16", 30, 1 << 14, true},
		{"fd00::/16", 64, 1 << 30, true},
	} {
		if got := Count(pfx(tc.cluster), tc.bits); got != tc.count {
			t.Errorf("Count(%s,/%d) = %d, want %d", tc.cluster, tc.bits, got, tc.count)
		}
		if err := Validate(pfx(tc.cluster), tc.bits); (err == nil) != tc.ok {
			t.Errorf("Validate(%s,/%d) = %v, want ok=%v", tc.cluster, tc.bits, err, tc.ok)
		}
	}
	if Validate(netip.Prefix{}, 24) == nil {
		t.Error("no cluster CIDR must be invalid")
	}
}

func TestLeaseName(t *testing.T) {
	for _, tc := range []struct{ block, name string }{
		{"10.244.1.0/24", "patronus-block-10-244-1-0-24"},
		{"10.244.1.64/26", "patronus-block-10-244-1-64-26"},
		{"10.244.1.7/24", "patronus-block-10-244-1-0-24"},
		{"fd00:10:0:3::/64", "patronus-block-fd00-10-0-3---64"},
	} {
		if got := LeaseName(pfx(tc.block)); got != tc.name {
			t.Errorf("LeaseName(%s) = %s, want %s", tc.block, got, tc.name)
		}
		if p := pfx(tc.block); p.Addr().Is4() {
			if back, ok := ParseLeaseName(tc.name); !ok || back != p.Masked() {
				t.Errorf("ParseLeaseName(%s) = %v %v", tc.name, back, ok)
			}
		}
	}
	for _, bad := range []string{"patronus", "patronus-block-10-244-1-24", "patronus-block-10-244-1-5-24", "x-10-244-1-0-24"} {
		if _, ok := ParseLeaseName(bad); ok {
			t.Errorf("ParseLeaseName(%q) accepted", bad)
		}
	}
}

func TestGateway(t *testing.T) {
	if g := Gateway(pfx("10.244.3.0/24")); g.String() != "10.244.3.1" {
		t.Errorf("gateway %s", g)
	}
}

func TestCandidates(t *testing.T) {
	cl := pfx("10.244.0.0/22") // 4 blocks of /24
	all := Candidates(cl, 24, "node-a", nil, 0)
	if len(all) != 4 {
		t.Fatalf("candidates %v", all)
	}
	seen := map[netip.Prefix]bool{}
	for _, b := range all {
		if seen[b] || !cl.Contains(b.Addr()) || b.Bits() != 24 {
			t.Fatalf("bad or duplicate candidate %v in %v", b, all)
		}
		seen[b] = true
	}
	taken := map[netip.Prefix]bool{pfx("10.244.0.0/24"): true, pfx("10.244.2.0/24"): true}
	got := Candidates(cl, 24, "node-a", taken, 0)
	if len(got) != 2 || taken[got[0]] || taken[got[1]] {
		t.Fatalf("candidates with taken: %v", got)
	}
	if got := Candidates(cl, 24, "node-a", nil, 1); len(got) != 1 || got[0] != all[0] {
		t.Fatalf("limit 1: %v (all %v)", got, all)
	}
	// Different names start at different offsets (spreads concurrent claims).
	starts := map[netip.Prefix]bool{}
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		starts[Candidates(pfx("10.244.0.0/16"), 24, n, nil, 1)[0]] = true
	}
	if len(starts) < 4 {
		t.Errorf("8 names start at only %d blocks", len(starts))
	}
	full := map[netip.Prefix]bool{}
	for _, b := range all {
		full[b] = true
	}
	if got := Candidates(cl, 24, "x", full, 0); len(got) != 0 {
		t.Errorf("exhausted cluster CIDR gave %v", got)
	}
}

func TestResolve(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b1, b2, b3 := pfx("10.244.1.0/24"), pfx("10.244.2.0/24"), pfx("10.244.3.0/24")
	for _, tc := range []struct {
		name    string
		claims  []Claim
		winners map[netip.Prefix]string
		losers  []string // node/block
	}{
		{"disjoint", []Claim{{b1, "a", t0}, {b2, "b", t0}}, map[netip.Prefix]string{b1: "a", b2: "b"}, nil},
		{"older wins", []Claim{{b1, "z", t0}, {b1, "a", t0.Add(time.Second)}}, map[netip.Prefix]string{b1: "z"}, []string{"a/10.244.1.0/24"}},
		{"tie: lower name", []Claim{{b1, "n2", t0}, {b1, "n1", t0}}, map[netip.Prefix]string{b1: "n1"}, []string{"n2/10.244.1.0/24"}},
		{"overlap of sizes", []Claim{{pfx("10.244.0.0/23"), "big", t0.Add(time.Second)}, {b1, "small", t0}},
			map[netip.Prefix]string{b1: "small"}, []string{"big/10.244.0.0/23"}},
		{"one block per node: oldest", []Claim{{b2, "a", t0.Add(time.Minute)}, {b1, "a", t0}}, map[netip.Prefix]string{b1: "a"}, []string{"a/10.244.2.0/24"}},
		{"duplicate claim", []Claim{{b1, "a", t0}, {b1, "a", t0}}, map[netip.Prefix]string{b1: "a"}, nil},
		{"loser's second claim stands", []Claim{{b1, "a", t0}, {b1, "b", t0.Add(time.Second)}, {b3, "b", t0.Add(2 * time.Second)}},
			map[netip.Prefix]string{b1: "a", b3: "b"}, []string{"b/10.244.1.0/24"}},
		{"invalid ignored", []Claim{{netip.Prefix{}, "a", t0}, {b1, "", t0}}, map[netip.Prefix]string{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Order-independent: every permutation gives the same answer.
			for range 20 {
				cs := append([]Claim(nil), tc.claims...)
				rand.Shuffle(len(cs), func(i, j int) { cs[i], cs[j] = cs[j], cs[i] })
				r := Resolve(cs)
				if len(r.Winners) != len(tc.winners) {
					t.Fatalf("winners %v, want %v", r.Winners, tc.winners)
				}
				for b, n := range tc.winners {
					if r.Winners[b].Node != n {
						t.Fatalf("block %s held by %q, want %q (%v)", b, r.Winners[b].Node, n, r.Winners)
					}
					if h, ok := r.Held(n); !ok || h != b {
						t.Fatalf("Held(%s) = %v %v", n, h, ok)
					}
				}
				var losers []string
				for _, l := range r.Losers {
					losers = append(losers, l.Node+"/"+l.Block.String())
				}
				if len(losers) != len(tc.losers) {
					t.Fatalf("losers %v, want %v", losers, tc.losers)
				}
				for i := range losers {
					if losers[i] != tc.losers[i] {
						t.Fatalf("losers %v, want %v", losers, tc.losers)
					}
				}
			}
		})
	}
}

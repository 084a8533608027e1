package resolve

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func ex(cluster string, age int, typ, aff string, ports ...Port) Export {
	return Export{Cluster: cluster, Namespace: "ns", Name: "web", Type: typ, SessionAffinity: aff,
		Ports: ports, ExportedAt: t0.Add(time.Duration(age) * time.Minute)}
}

func tcp(name string, n int32) Port { return Port{Name: name, Port: n, Protocol: "TCP"} }
func udp(name string, n int32) Port { return Port{Name: name, Port: n, Protocol: "UDP"} }

func reasons(cs []Conflict) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Reason)
	}
	return out
}

func TestMerge(t *testing.T) {
	tests := []struct {
		name      string
		exports   []Export
		typ, aff  string
		winner    string
		ports     []Port
		reasons   []string
		msgSubstr []string
	}{
		{name: "single export", exports: []Export{ex("a", 0, TypeClusterSetIP, "", tcp("http", 80))},
			typ: TypeClusterSetIP, aff: AffinityNone, winner: "a", ports: []Port{tcp("http", 80)}},
		{name: "identical exports, no conflict",
			exports: []Export{ex("b", 1, TypeClusterSetIP, "", tcp("http", 80)), ex("a", 0, TypeClusterSetIP, "", tcp("http", 80))},
			typ:     TypeClusterSetIP, aff: AffinityNone, winner: "a", ports: []Port{tcp("http", 80)}},
		{name: "union of different ports, reported as a conflict",
			exports: []Export{ex("a", 0, "", "", tcp("http", 80)), ex("b", 1, "", "", tcp("https", 443))},
			typ:     TypeClusterSetIP, aff: AffinityNone, winner: "a", ports: []Port{tcp("http", 80), tcp("https", 443)},
			reasons: []string{ReasonPortConflict}, msgSubstr: []string{"a does not export https=443/TCP", "b does not export http=80/TCP"}},
		{name: "TCP and UDP on one number coexist",
			exports: []Export{ex("a", 0, "", "", tcp("dns-tcp", 53)), ex("b", 1, "", "", udp("dns", 53))},
			typ:     TypeClusterSetIP, aff: AffinityNone, winner: "a", ports: []Port{tcp("dns-tcp", 53), udp("dns", 53)},
			reasons: []string{ReasonPortConflict}},
		{name: "same ports in another order: no conflict",
			exports: []Export{ex("a", 0, "", "", tcp("http", 80), udp("q", 80)), ex("b", 1, "", "", udp("q", 80), Port{Name: "http", Port: 80})},
			typ:     TypeClusterSetIP, aff: AffinityNone, winner: "a", ports: []Port{tcp("http", 80), udp("q", 80)}},
		{name: "internal traffic policy and traffic distribution: oldest wins, conflicts reported",
			exports: []Export{
				{Cluster: "b", Namespace: "ns", Name: "web", Ports: []Port{tcp("http", 80)}, ExportedAt: t0.Add(time.Minute), InternalTrafficPolicy: "Local"},
				{Cluster: "a", Namespace: "ns", Name: "web", Ports: []Port{tcp("http", 80)}, ExportedAt: t0, InternalTrafficPolicy: "Cluster", TrafficDistribution: "PreferClose"}},
			typ: TypeClusterSetIP, aff: AffinityNone, winner: "a", ports: []Port{tcp("http", 80)},
			reasons: []string{ReasonInternalTrafficPolicyConflict, ReasonTrafficDistributionConflict}},
		{name: "same name, other protocol: oldest wins",
			exports: []Export{ex("b", 5, "", "", udp("dns", 53)), ex("a", 0, "", "", tcp("dns", 53))},
			typ:     TypeClusterSetIP, aff: AffinityNone, winner: "a", ports: []Port{tcp("dns", 53)},
			reasons: []string{ReasonPortConflict}, msgSubstr: []string{`port "dns" is dns=53/UDP in b but dns=53/TCP in a (kept)`}},
		{name: "same number, other name: oldest wins",
			exports: []Export{ex("a", 0, "", "", tcp("http", 80)), ex("b", 1, "", "", tcp("web", 80))},
			typ:     TypeClusterSetIP, aff: AffinityNone, winner: "a", ports: []Port{tcp("http", 80)},
			reasons: []string{ReasonPortConflict}},
		{name: "unnamed ports with different numbers conflict",
			exports: []Export{ex("a", 0, "", "", tcp("", 80)), ex("b", 1, "", "", tcp("", 8080))},
			typ:     TypeClusterSetIP, aff: AffinityNone, winner: "a", ports: []Port{tcp("", 80)},
			reasons: []string{ReasonPortConflict}},
		{name: "empty protocol means TCP",
			exports: []Export{ex("a", 0, "", "", Port{Name: "http", Port: 80}), ex("b", 1, "", "", tcp("http", 80))},
			typ:     TypeClusterSetIP, aff: AffinityNone, winner: "a", ports: []Port{tcp("http", 80)}},
		{name: "type conflict: oldest (headless) wins",
			exports: []Export{ex("a", 3, TypeClusterSetIP, "", tcp("http", 80)), ex("b", 2, TypeHeadless, "", tcp("http", 80))},
			typ:     TypeHeadless, aff: AffinityNone, winner: "b", ports: []Port{tcp("http", 80)},
			reasons: []string{ReasonTypeConflict}, msgSubstr: []string{"using Headless from the oldest export (cluster b); a exports ClusterSetIP"}},
		{name: "equal age: lowest cluster name wins",
			exports: []Export{ex("z", 0, TypeHeadless, "", tcp("http", 80)), ex("m", 0, TypeClusterSetIP, "", tcp("http", 80))},
			typ:     TypeClusterSetIP, aff: AffinityNone, winner: "m", ports: []Port{tcp("http", 80)},
			reasons: []string{ReasonTypeConflict}},
		{name: "affinity conflict",
			exports: []Export{ex("a", 0, "", AffinityClientIP, tcp("http", 80)), ex("b", 1, "", AffinityNone, tcp("http", 80))},
			typ:     TypeClusterSetIP, aff: AffinityClientIP, winner: "a", ports: []Port{tcp("http", 80)},
			reasons: []string{ReasonSessionAffinityConflict}},
		{name: "everything conflicts at once",
			exports: []Export{ex("a", 0, TypeHeadless, AffinityClientIP, tcp("http", 80)), ex("b", 1, TypeClusterSetIP, "", udp("http", 80), tcp("extra", 9000))},
			typ:     TypeHeadless, aff: AffinityClientIP, winner: "a", ports: []Port{tcp("http", 80), tcp("extra", 9000)},
			reasons: []string{ReasonTypeConflict, ReasonSessionAffinityConflict, ReasonPortConflict}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			im := Merge(tc.exports)
			if im.Type != tc.typ || im.SessionAffinity != tc.aff || im.Winner != tc.winner {
				t.Errorf("type/affinity/winner = %s/%s/%s, want %s/%s/%s", im.Type, im.SessionAffinity, im.Winner, tc.typ, tc.aff, tc.winner)
			}
			if !reflect.DeepEqual(im.Ports, tc.ports) {
				t.Errorf("ports = %v, want %v", im.Ports, tc.ports)
			}
			if got := reasons(im.Conflicts); !reflect.DeepEqual(got, tc.reasons) {
				t.Errorf("conflicts = %v, want %v (%+v)", got, tc.reasons, im.Conflicts)
			}
			var all strings.Builder
			for _, c := range im.Conflicts {
				all.WriteString(c.Message + "\n")
			}
			for _, s := range tc.msgSubstr {
				if !strings.Contains(all.String(), s) {
					t.Errorf("conflict messages %q do not contain %q", all.String(), s)
				}
			}
			if len(im.Clusters) != len(tc.exports) {
				t.Errorf("clusters = %v", im.Clusters)
			}
			// Every cluster computes the same import whatever order it received exports in.
			rev := make([]Export, len(tc.exports))
			for i, e := range tc.exports {
				rev[len(rev)-1-i] = e
			}
			if again := Merge(rev); !reflect.DeepEqual(again, im) {
				t.Errorf("merge depends on input order: %+v vs %+v", again, im)
			}
		})
	}
}

func TestAffinityTimeout(t *testing.T) {
	a := ex("a", 0, "", AffinityClientIP, tcp("http", 80))
	a.AffinityTimeout = 600
	b := ex("b", 1, "", AffinityClientIP, tcp("http", 80))
	b.AffinityTimeout = 30
	im := Merge([]Export{b, a})
	if im.AffinityTimeout != 600 {
		t.Errorf("timeout = %d, want the oldest export's 600", im.AffinityTimeout)
	}
	if got := reasons(im.Conflicts); !reflect.DeepEqual(got, []string{ReasonSessionAffinityConfigConflict}) {
		t.Errorf("conflicts = %v", got)
	}
}

func TestAllocateVIP(t *testing.T) {
	r := netip.MustParsePrefix(DefaultClusterSetIPRange)
	a1, err := AllocateVIP(r, "ns", "web", nil)
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := AllocateVIP(r, "ns", "web", nil)
	if a1 != a2 || !r.Contains(a1) {
		t.Fatalf("not deterministic or outside range: %s %s", a1, a2)
	}
	if b, _ := AllocateVIP(r, "ns", "api", nil); b == a1 {
		t.Errorf("two names hash to the same address %s (possible but not for these names)", b)
	}
	// Taken address: the next one is used.
	next, _ := AllocateVIP(r, "ns", "web", func(a netip.Addr) bool { return a == a1 })
	if next == a1 || !r.Contains(next) {
		t.Errorf("probe gave %s (first choice %s)", next, a1)
	}

	tests := []struct {
		name   string
		r      string
		taken  []string
		want   []string // any of these
		errSub string
	}{
		{name: "/30 uses only the two host addresses", r: "192.0.2.0/30", want: []string{"192.0.2.1", "192.0.2.2"}},
		{name: "/30 with one taken", r: "192.0.2.0/30", taken: []string{"192.0.2.1"}, want: []string{"192.0.2.2"}},
		{name: "/30 full", r: "192.0.2.0/30", taken: []string{"192.0.2.1", "192.0.2.2"}, errSub: "exhausted"},
		{name: "/32", r: "192.0.2.7/32", want: []string{"192.0.2.7"}},
		{name: "IPv6", r: "fd00:77::/112", want: nil},
		{name: "unmasked range is masked", r: "192.0.2.3/30", want: []string{"192.0.2.1", "192.0.2.2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := netip.MustParsePrefix(tc.r)
			got, err := AllocateVIP(p, "ns", "web", func(a netip.Addr) bool {
				for _, s := range tc.taken {
					if a.String() == s {
						return true
					}
				}
				return false
			})
			if tc.errSub != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errSub) {
					t.Fatalf("err = %v, want %q", err, tc.errSub)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !p.Masked().Contains(got) {
				t.Fatalf("%s outside %s", got, p)
			}
			if tc.want != nil {
				ok := false
				for _, w := range tc.want {
					ok = ok || got.String() == w
				}
				if !ok {
					t.Errorf("got %s, want one of %v", got, tc.want)
				}
			}
		})
	}
}

func TestDefaultRangeOverlapsNoDefault(t *testing.T) {
	r := netip.MustParsePrefix(DefaultClusterSetIPRange)
	for _, s := range []string{"10.96.0.0/12", "10.244.0.0/16", "10.245.0.0/16", "100.64.0.0/10"} {
		if r.Overlaps(netip.MustParsePrefix(s)) {
			t.Errorf("default range %s overlaps %s", r, s)
		}
	}
}

func TestMergeCarriesTrafficFields(t *testing.T) {
	im := Merge([]Export{
		{Cluster: "b", Namespace: "ns", Name: "web", ExportedAt: t0.Add(time.Minute), InternalTrafficPolicy: "Local"},
		{Cluster: "a", Namespace: "ns", Name: "web", ExportedAt: t0, InternalTrafficPolicy: "Cluster", TrafficDistribution: "PreferClose"},
	})
	if im.InternalTrafficPolicy != "Cluster" || im.TrafficDistribution != "PreferClose" {
		t.Errorf("internal traffic policy/traffic distribution = %q/%q, want the oldest export's Cluster/PreferClose",
			im.InternalTrafficPolicy, im.TrafficDistribution)
	}
}

package mesh

import (
	"slices"
	"testing"
)

func TestSeedsToJoin(t *testing.T) {
	alive := func(addr string) Member { return Member{Name: addr, Addr: addr, Status: "alive"} }
	failed := func(addr string) Member { return Member{Name: addr, Addr: addr, Status: "failed"} }
	for _, tc := range []struct {
		name    string
		seeds   []string
		members []Member
		want    []string
	}{
		{"no members: every seed", []string{"192.0.2.1:7946", "192.0.2.2:7946"}, nil, []string{"192.0.2.1:7946", "192.0.2.2:7946"}},
		{"alive seed skipped", []string{"192.0.2.1:7946", "192.0.2.2:7946"}, []Member{alive("192.0.2.1:7946")}, []string{"192.0.2.2:7946"}},
		{"all alive: none", []string{"192.0.2.1:7946"}, []Member{alive("192.0.2.1:7946"), alive("192.0.2.9:7946")}, nil},
		{"failed member is re-joined", []string{"192.0.2.1:7946"}, []Member{failed("192.0.2.1:7946")}, []string{"192.0.2.1:7946"}},
		{"other port is another member", []string{"192.0.2.1:7947"}, []Member{alive("192.0.2.1:7946")}, []string{"192.0.2.1:7947"}},
		{"v4-mapped member address", []string{"192.0.2.1:7946"}, []Member{alive("[::ffff:192.0.2.1]:7946")}, nil},
		{"host name always joined", []string{"gw.example:7946"}, []Member{alive("192.0.2.1:7946")}, []string{"gw.example:7946"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := seedsToJoin(tc.seeds, tc.members); !slices.Equal(got, tc.want) {
				t.Fatalf("seedsToJoin = %v, want %v", got, tc.want)
			}
		})
	}
}

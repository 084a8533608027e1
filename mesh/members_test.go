package mesh

import "testing"

func TestCountMembers(t *testing.T) {
	for _, tc := range []struct {
		name           string
		ms             []Member
		members, alive int
	}{
		{"none", nil, 0, 0},
		{"mixed", []Member{{Name: "a", Status: "alive"}, {Name: "b", Status: "failed"}, {Name: "c", Status: "left"},
			{Name: "d", Status: "alive"}, {Name: "e", Status: "leaving"}}, 5, 2},
		{"none alive", []Member{{Name: "a", Status: "failed"}}, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if m, a := CountMembers(tc.ms); m != tc.members || a != tc.alive {
				t.Fatalf("CountMembers = %d, %d; want %d, %d", m, a, tc.members, tc.alive)
			}
		})
	}
}

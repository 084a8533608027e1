package agent

import (
	"testing"

	"github.com/patronus/patronus/paths"
)

// TestClusterReachable: a cluster's ClusterSetIP endpoints are left out only when every
// probed path to it is down; unmeasured paths, or no path at all (a cluster reached some
// other way), are not evidence of an outage.
func TestClusterReachable(t *testing.T) {
	path := func(dst string, st paths.State) paths.PathStatus {
		return paths.PathStatus{PathSpec: paths.PathSpec{ID: dst + "/" + string(st), Dst: dst}, State: st}
	}
	for _, tc := range []struct {
		name     string
		paths    []paths.PathStatus
		cluster  string
		want     bool
		wantDown string
	}{
		{name: "no paths", cluster: "b", want: true},
		{name: "one up", paths: []paths.PathStatus{path("b", paths.StateDown), path("b", paths.StateUp)}, cluster: "b", want: true},
		{name: "unknown yet", paths: []paths.PathStatus{path("b", paths.StateUnknown)}, cluster: "b", want: true},
		{name: "all down", paths: []paths.PathStatus{path("b", paths.StateDown), path("b", paths.StateDown), path("c", paths.StateUp)},
			cluster: "b", want: false, wantDown: "b"},
		{name: "other cluster down", paths: []paths.PathStatus{path("c", paths.StateDown), path("b", paths.StateUp)}, cluster: "b", want: true, wantDown: "c"},
		{name: "two down", paths: []paths.PathStatus{path("d", paths.StateDown), path("c", paths.StateDown)}, cluster: "c", want: false, wantDown: "c,d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap := paths.Snapshot{Paths: tc.paths}
			if got := reachable(snap, tc.cluster); got != tc.want {
				t.Errorf("reachable(%s) = %v, want %v", tc.cluster, got, tc.want)
			}
			if got := downClusters(snap); got != tc.wantDown {
				t.Errorf("downClusters = %q, want %q", got, tc.wantDown)
			}
		})
	}
}

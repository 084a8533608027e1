package paths

import (
	"maps"
	"testing"
)

func TestSnapshotSelected(t *testing.T) {
	snap := Snapshot{Selections: []SelectionStatus{
		{Dst: "b", Class: BestEffort, PathID: "p2"},
		{Dst: "b", Class: LatencySensitive, PathID: "p1"},
		{Dst: "b", Class: BestEffort, MaxLatencyMs: 10, PathID: "p1"},
		{Dst: "c", Class: BestEffort, PathID: "", Condition: CondNoPathUp},
		{Dst: "d", Class: BestEffort, PathID: "p4"},
	}}
	got := snap.Selected(BestEffort)
	if want := map[string]string{"b": "p2", "d": "p4"}; !maps.Equal(got, want) {
		t.Fatalf("Selected(best-effort) = %v, want %v", got, want)
	}
	if got := snap.Selected(Bulk); len(got) != 0 {
		t.Fatalf("Selected(bulk) = %v, want none", got)
	}
}

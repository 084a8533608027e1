package steer

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/patronus/patronus/dataplane/qos"
	"github.com/patronus/patronus/paths"
)

var (
	pfxB = netip.MustParsePrefix("10.82.0.0/16")
	pfxC = netip.MustParsePrefix("10.83.0.0/16")
)

func TestNewPlan(t *testing.T) {
	twoPaths := []Path{{ID: "p1", Dst: "b", Dev: "wg-p1", Up: true}, {ID: "p2", Dst: "b", Dev: "wg-p2"}}
	dsts := map[string][]netip.Prefix{"b": {pfxB, netip.MustParsePrefix("10.82.1.0/16")}, "c": {pfxC}}
	pod := func(ip, dst, path string) Pod {
		return Pod{Name: "ns/" + ip, IP: netip.MustParseAddr(ip), Via: map[string]string{dst: path}}
	}
	tests := []struct {
		name    string
		spec    Spec
		wantErr string
		check   func(t *testing.T, p Plan)
	}{
		{name: "marks and tables in path order, prefixes deduplicated",
			spec: Spec{Paths: twoPaths, Destinations: dsts, Pods: []Pod{pod("10.81.1.2", "b", "p2"), pod("10.81.1.1", "b", "p1")}},
			check: func(t *testing.T, p Plan) {
				if len(p.Paths) != 2 || p.Paths[0].Mark != 0x10000 || p.Paths[1].Mark != 0x20000 || p.Paths[1].Table != TableBase+2 {
					t.Errorf("paths %+v", p.Paths)
				}
				if len(p.Paths[0].Prefixes) != 1 || p.Paths[0].Prefixes[0] != pfxB {
					t.Errorf("prefixes %v", p.Paths[0].Prefixes)
				}
				if len(p.Steers) != 2 || p.Steers[0].Pod != netip.MustParseAddr("10.81.1.1") || p.Steers[0].Mark != 0x10000 || p.Steers[1].Mark != 0x20000 {
					t.Errorf("steers %+v", p.Steers)
				}
			}},
		{name: "pod without a selection is not steered",
			spec:  Spec{Paths: twoPaths, Destinations: dsts, Pods: []Pod{pod("10.81.1.1", "b", "")}},
			check: func(t *testing.T, p Plan) { assertLen(t, p.Steers, 0) }},
		{name: "default path for senders not listed, after every pod's steer",
			spec: Spec{Paths: twoPaths, Destinations: dsts, Pods: []Pod{pod("10.81.1.1", "b", "p1")}, Defaults: map[string]string{"b": "p2", "c": ""}},
			check: func(t *testing.T, p Plan) {
				if len(p.Defaults) != 1 || p.Defaults[0].Pod.IsValid() || p.Defaults[0].Prefix != pfxB || p.Defaults[0].Mark != 0x20000 {
					t.Fatalf("defaults %+v", p.Defaults)
				}
				rs := chainRules(p)
				if last := rs[len(rs)-1].comment; last != "default 10.82.0.0/16 p2" {
					t.Fatalf("last rule %q, want the default", last)
				}
			}},
		{name: "default path unknown", spec: Spec{Paths: twoPaths, Defaults: map[string]string{"b": "p9"}}, wantErr: "unknown path"},
		{name: "default path to another cluster", spec: Spec{Paths: twoPaths, Defaults: map[string]string{"c": "p1"}}, wantErr: "leads to b"},
		{name: "unknown path", spec: Spec{Paths: twoPaths, Pods: []Pod{pod("10.81.1.1", "b", "p9")}}, wantErr: "unknown path"},
		{name: "path to another cluster", spec: Spec{Paths: twoPaths, Pods: []Pod{pod("10.81.1.1", "c", "p1")}}, wantErr: "leads to b"},
		{name: "duplicate path", spec: Spec{Paths: []Path{twoPaths[0], twoPaths[0]}}, wantErr: "listed twice"},
		{name: "shared device", spec: Spec{Paths: []Path{twoPaths[0], {ID: "p3", Dst: "b", Dev: "wg-p1"}}}, wantErr: "share device"},
		{name: "long device", spec: Spec{Paths: []Path{{ID: "p", Dst: "b", Dev: "wg-0123456789abc"}}}, wantErr: "longer than 15"},
		{name: "missing dev", spec: Spec{Paths: []Path{{ID: "p", Dst: "b"}}}, wantErr: "required"},
		{name: "IPv6 pod", spec: Spec{Paths: twoPaths, Pods: []Pod{{Name: "x", IP: netip.MustParseAddr("fd00::1")}}}, wantErr: "not IPv4"},
		{name: "shared pod address", spec: Spec{Paths: twoPaths, Pods: []Pod{pod("10.81.1.1", "b", "p1"), pod("10.81.1.1", "b", "p2")}}, wantErr: "share address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPlan(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, p)
		})
	}
}

func assertLen[T any](t *testing.T, s []T, n int) {
	t.Helper()
	if len(s) != n {
		t.Errorf("%d elements, want %d: %+v", len(s), n, s)
	}
}

func TestAssign(t *testing.T) {
	snap := paths.Snapshot{
		Paths: []paths.PathStatus{
			{PathSpec: paths.PathSpec{ID: "p1", Dst: "b"}, State: paths.StateUp},
			{PathSpec: paths.PathSpec{ID: "p2", Dst: "b"}, State: paths.StateDown},
			{PathSpec: paths.PathSpec{ID: "p3", Dst: "b"}, State: paths.StateUp}, // no device
		},
		Selections: []paths.SelectionStatus{
			{Dst: "b", Class: paths.LatencySensitive, PathID: "p1"},
			{Dst: "b", Class: paths.Bulk, PathID: "p2"},
			{Dst: "b", Class: paths.BestEffort, PathID: "p3"},
			{Dst: "b", Class: paths.LatencySensitive, MaxLatencyMs: 5, PathID: "p2"},
		},
	}
	devs := map[string]string{"p1": "wg-p1", "p2": "wg-p2"}
	ip := netip.MustParseAddr
	ps, pods := Assign(snap, devs, []PodClass{
		{Name: "ls", IP: ip("10.0.0.1"), Class: paths.LatencySensitive},
		{Name: "bulk", IP: ip("10.0.0.2"), Class: paths.Bulk},
		{Name: "be", IP: ip("10.0.0.3"), Class: paths.BestEffort},
		{Name: "bound", IP: ip("10.0.0.4"), Class: paths.LatencySensitive, MaxLatencyMs: 5},
		{Name: "unknown-bound", IP: ip("10.0.0.5"), Class: paths.LatencySensitive, MaxLatencyMs: 7},
	})
	if len(ps) != 2 || !ps[0].Up || ps[1].Up || ps[1].Dev != "wg-p2" {
		t.Errorf("paths %+v", ps)
	}
	want := map[string]string{"ls": "p1", "bulk": "p2", "be": "", "bound": "p2", "unknown-bound": "p1"}
	for _, p := range pods {
		if got := p.Via["b"]; got != want[p.Name] {
			t.Errorf("pod %s via %q, want %q", p.Name, got, want[p.Name])
		}
	}
	reqs := Requirements([]PodClass{{Class: paths.LatencySensitive, MaxLatencyMs: 5}, {Class: paths.LatencySensitive, MaxLatencyMs: 5}, {Class: paths.Bulk}}, []string{"b", "c"})
	if len(reqs) != 2 || reqs[0].Dst != "b" || reqs[1].Dst != "c" || reqs[0].MaxLatency.Milliseconds() != 5 {
		t.Errorf("requirements %+v", reqs)
	}
}

// fakeKernel counts writes.
type fakeKernel struct{ programs, removes int }

func (f *fakeKernel) Program(Plan) error { f.programs++; return nil }
func (f *fakeKernel) Remove() error      { f.removes++; return nil }

func TestSteererWritesOnlyChanges(t *testing.T) {
	k := &fakeKernel{}
	s := New(Options{Kernel: k, Devices: map[string]string{"p1": "wg-p1", "p2": "wg-p2"},
		Destinations: map[string][]netip.Prefix{"b": {pfxB}}})
	s.SetPods([]PodClass{{Name: "ls", IP: netip.MustParseAddr("10.0.0.1"), Class: paths.LatencySensitive}})
	snap := func(sel string, p2 paths.State) paths.Snapshot {
		return paths.Snapshot{Paths: []paths.PathStatus{
			{PathSpec: paths.PathSpec{ID: "p1", Dst: "b"}, State: paths.StateUp},
			{PathSpec: paths.PathSpec{ID: "p2", Dst: "b"}, State: p2}},
			Selections: []paths.SelectionStatus{{Dst: "b", Class: paths.LatencySensitive, PathID: sel}}}
	}
	for i, step := range []struct {
		snap    paths.Snapshot
		changed bool
	}{
		{snap("p1", paths.StateUp), true},
		{snap("p1", paths.StateUp), false},
		{snap("p2", paths.StateUp), true},   // selection moved
		{snap("p2", paths.StateDown), true}, // liveness changed (connections on p2 move)
		{snap("p2", paths.StateDown), false},
	} {
		changed, err := s.Update(step.snap)
		if err != nil || changed != step.changed {
			t.Errorf("step %d: changed %v err %v, want %v", i, changed, err, step.changed)
		}
	}
	if k.programs != 3 {
		t.Errorf("%d writes, want 3", k.programs)
	}
	if err := s.Close(); err != nil || k.removes != 1 {
		t.Errorf("close: %v, removes %d", err, k.removes)
	}
}

// fakeQoS records the shaped devices.
type fakeQoS struct{ programs map[string]qos.Plan }

func (f *fakeQoS) Installed(string) ([]qos.Class, error) { return nil, nil }
func (f *fakeQoS) Program(link string, p qos.Plan) error { f.programs[link] = p; return nil }
func (f *fakeQoS) Remove(link string) error              { delete(f.programs, link); return nil }

func TestSteererShapesGuarantees(t *testing.T) {
	k, q := &fakeKernel{}, &fakeQoS{programs: map[string]qos.Plan{}}
	s := New(Options{Kernel: k, QoS: q, Devices: map[string]string{"p1": "wg-p1", "p2": "wg-p2"},
		Destinations: map[string][]netip.Prefix{"b": {pfxB}}})
	snap := paths.Snapshot{Paths: []paths.PathStatus{
		{PathSpec: paths.PathSpec{ID: "p1", Dst: "b", BandwidthMbps: 100}, State: paths.StateUp},
		{PathSpec: paths.PathSpec{ID: "p2", Dst: "b"}, State: paths.StateUp}}, // bandwidth unknown: not shaped
		Selections: []paths.SelectionStatus{{Dst: "b", Class: paths.Bulk, PathID: "p1"}}}
	ip := netip.MustParseAddr
	s.SetPods([]PodClass{{Name: "b", IP: ip("10.0.0.9"), Class: paths.Bulk, MinBandwidthMbps: 20},
		{Name: "a", IP: ip("10.0.0.3"), Class: paths.Bulk, MinBandwidthMbps: 10}, {Name: "c", IP: ip("10.0.0.1"), Class: paths.Bulk}})
	if _, err := s.Update(snap); err != nil {
		t.Fatal(err)
	}
	p, _ := s.Plan()
	if len(p.Marked) != 2 || p.Marked[0].QoSMark != 0x100 || p.Marked[1].QoSMark != 0x200 || p.Marked[1].MinMbps != 20 {
		t.Errorf("marked pods %+v", p.Marked)
	}
	pl, ok := q.programs["wg-p1"]
	if !ok || len(q.programs) != 1 {
		t.Fatalf("shaped %v", q.programs)
	}
	var marks []uint32
	for _, c := range pl.PodClass {
		marks = append(marks, c.Mark)
	}
	if len(marks) != 3 || marks[2] != ProbeMark {
		t.Errorf("classes by mark %#x: want the two pods and the probes", marks)
	}
	// No guarantee left: the shaping goes.
	s.SetPods(nil)
	if _, err := s.Update(snap); err != nil || len(q.programs) != 0 {
		t.Errorf("after the guarantees left: %v, shaped %v", err, q.programs)
	}
}

func TestDefaults(t *testing.T) {
	snap := paths.Snapshot{Selections: []paths.SelectionStatus{
		{Dst: "b", Class: paths.BestEffort, PathID: "p2"},
		{Dst: "b", Class: paths.LatencySensitive, PathID: "p1"},
		{Dst: "b", Class: paths.BestEffort, MaxLatencyMs: 10, PathID: "p1"},
		{Dst: "c", Class: paths.BestEffort, PathID: "p3"}, // no device: not steered
	}}
	got := Defaults(snap, map[string]string{"p1": "wg-a", "p2": "wg1-a"}, paths.BestEffort)
	if len(got) != 1 || got["b"] != "p2" {
		t.Fatalf("Defaults = %v, want b: p2", got)
	}
	if got := Defaults(snap, map[string]string{"p1": "wg-a"}, ""); got != nil {
		t.Fatalf("no default class: %v", got)
	}
}

package qos

import (
	"strings"
	"testing"
)

func TestNewPlan(t *testing.T) {
	for _, tc := range []struct {
		name    string
		spec    Spec
		err     string
		classes []Class
	}{
		{"no guarantees", Spec{RateMbps: 100}, "", []Class{
			{Minor: 1, RateBps: 100e6, CeilBps: 100e6},
			{Minor: 2, Parent: 1, RateBps: 100e6, CeilBps: 100e6},
		}},
		{"two pods, sorted by mark", Spec{RateMbps: 100, Guarantees: []Guarantee{{Mark: 0x20, MinMbps: 10, Pod: "b"}, {Mark: 0x10, MinMbps: 30, Pod: "a"}}}, "", []Class{
			{Minor: 1, RateBps: 100e6, CeilBps: 100e6},
			{Minor: 2, Parent: 1, RateBps: 60e6, CeilBps: 100e6},
			{Minor: 0x10, Parent: 1, RateBps: 30e6, CeilBps: 100e6, Mark: 0x10, Pod: "a"},
			{Minor: 0x11, Parent: 1, RateBps: 10e6, CeilBps: 100e6, Mark: 0x20, Pod: "b"},
		}},
		{"fully booked keeps 1 Mbit for the rest", Spec{RateMbps: 50, Guarantees: []Guarantee{{Mark: 1, MinMbps: 50}}}, "", []Class{
			{Minor: 1, RateBps: 50e6, CeilBps: 50e6},
			{Minor: 2, Parent: 1, RateBps: 1e6, CeilBps: 50e6},
			{Minor: 0x10, Parent: 1, RateBps: 50e6, CeilBps: 50e6, Mark: 1},
		}},
		{"oversubscribed", Spec{RateMbps: 50, Guarantees: []Guarantee{{Mark: 1, MinMbps: 30}, {Mark: 2, MinMbps: 30}}}, "more than the path's 50 Mbps", nil},
		{"no capacity", Spec{}, "capacity", nil},
		{"zero minimum", Spec{RateMbps: 10, Guarantees: []Guarantee{{Mark: 1, Pod: "x/y"}}}, `"x/y": min bandwidth`, nil},
		{"mark outside mask", Spec{RateMbps: 10, MarkMask: 0xff00, Guarantees: []Guarantee{{Mark: 0x1, MinMbps: 1}}}, "no bits under mask", nil},
		{"shared mark", Spec{RateMbps: 10, MarkMask: 0xff, Guarantees: []Guarantee{{Mark: 0x101, MinMbps: 1, Pod: "a"}, {Mark: 0x201, MinMbps: 1, Pod: "b"}}}, "share mark 0x1", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPlan(tc.spec)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Classes) != len(tc.classes) {
				t.Fatalf("classes %+v", p.Classes)
			}
			for i := range p.Classes {
				if p.Classes[i] != tc.classes[i] {
					t.Errorf("class %d: %+v, want %+v", i, p.Classes[i], tc.classes[i])
				}
			}
			if len(p.PodClass) != len(tc.spec.Guarantees) || p.Default != 2 {
				t.Errorf("pod classes %+v default %d", p.PodClass, p.Default)
			}
		})
	}
}

// fakeKernel records what Apply programs.
type fakeKernel struct {
	classes  map[string][]Class
	programs int
}

func (f *fakeKernel) Installed(link string) ([]Class, error) { return f.classes[link], nil }
func (f *fakeKernel) Program(link string, p Plan) error {
	f.programs++
	f.classes[link] = p.Classes
	return nil
}
func (f *fakeKernel) Remove(link string) error { delete(f.classes, link); return nil }

func TestApplyIdempotent(t *testing.T) {
	k := &fakeKernel{classes: map[string][]Class{}}
	spec := Spec{RateMbps: 100, Guarantees: []Guarantee{{Mark: 0x10, MinMbps: 20}}}
	for i, want := range []bool{true, false, false} {
		changed, err := Apply(k, "wg-b", spec, nil)
		if err != nil || changed != want {
			t.Fatalf("apply %d: changed %v err %v, want %v", i, changed, err, want)
		}
	}
	spec.Guarantees[0].MinMbps = 25
	if changed, _ := Apply(k, "wg-b", spec, nil); !changed || k.programs != 2 {
		t.Fatalf("a new minimum was not programmed (programs %d)", k.programs)
	}
	if _, err := Apply(k, "wg-b", Spec{RateMbps: 10, Guarantees: []Guarantee{{Mark: 1, MinMbps: 20}}}, nil); err == nil || k.programs != 2 {
		t.Fatalf("an invalid spec reached the kernel: %v", err)
	}
}

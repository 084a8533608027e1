package route

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// fakeKernel holds owned routes and rules and records every change.
type fakeKernel struct {
	routes []Route
	rules  []Rule
	links  map[string]bool
	ops    []string
}

func (f *fakeKernel) Routes() ([]Route, error) { return slices.Clone(f.routes), nil }
func (f *fakeKernel) AddRoute(r Route) error {
	if !f.links[r.Dev] {
		return errors.New("no such device")
	}
	f.ops = append(f.ops, "add "+r.String())
	f.routes = slices.DeleteFunc(f.routes, func(h Route) bool { return h.key() == r.key() })
	f.routes = append(f.routes, r)
	return nil
}
func (f *fakeKernel) DelRoute(r Route) error {
	f.ops = append(f.ops, "del "+r.String())
	f.routes = slices.DeleteFunc(f.routes, func(h Route) bool { return h.key() == r.key() })
	return nil
}
func (f *fakeKernel) Rules() ([]Rule, error) { return slices.Clone(f.rules), nil }
func (f *fakeKernel) AddRule(r Rule) error {
	f.ops = append(f.ops, "add rule "+r.String())
	f.rules = append(f.rules, r)
	return nil
}
func (f *fakeKernel) DelRule(r Rule) error {
	f.ops = append(f.ops, "del rule "+r.String())
	if i := slices.Index(f.rules, r); i >= 0 {
		f.rules = slices.Delete(f.rules, i, i+1)
	}
	return nil
}

func rt(dst, dev, via string) Route {
	r := Route{Dst: netip.MustParsePrefix(dst), Dev: dev, Table: MainTable}
	if via != "" {
		r.Via = netip.MustParseAddr(via)
	}
	return r
}

func TestApply(t *testing.T) {
	b := rt("10.248.0.0/16", "wg-a", "")
	c := rt("10.249.0.0/16", "wg-a", "")
	viaGW := rt("10.248.0.0/16", "eth0", "192.168.1.10")
	rule := Rule{Priority: 100, Dst: netip.MustParsePrefix("10.248.0.0/16"), Table: 77}
	for _, tc := range []struct {
		name    string
		have    []Route
		rules   []Rule
		desired Desired
		ops     []string
		wantErr bool
	}{
		{name: "empty to two", desired: Desired{Routes: []Route{c, b}},
			ops: []string{"add " + b.String(), "add " + c.String()}},
		{name: "unchanged: nothing", have: []Route{b, c}, desired: Desired{Routes: []Route{c, b}}},
		{name: "table 0 means main, unmasked dst", have: []Route{b},
			desired: Desired{Routes: []Route{{Dst: netip.MustParsePrefix("10.248.1.1/16"), Dev: "wg-a"}}}},
		{name: "withdrawn", have: []Route{b, c}, desired: Desired{Routes: []Route{b}}, ops: []string{"del " + c.String()}},
		{name: "all withdrawn", have: []Route{b, c}, desired: Desired{}, ops: []string{"del " + b.String(), "del " + c.String()}},
		{name: "next hop changed: replaced", have: []Route{b}, desired: Desired{Routes: []Route{viaGW}}, ops: []string{"add " + viaGW.String()}},
		{name: "missing device: others still installed", desired: Desired{Routes: []Route{rt("10.250.0.0/16", "gone", ""), b}},
			ops: []string{"add " + b.String()}, wantErr: true},
		{name: "conflicting routes", desired: Desired{Routes: []Route{b, viaGW}}, wantErr: true},
		{name: "rule added", have: []Route{b}, desired: Desired{Routes: []Route{b}, Rules: []Rule{rule}}, ops: []string{"add rule " + rule.String()}},
		{name: "rule kept, duplicate removed", rules: []Rule{rule, rule}, desired: Desired{Rules: []Rule{rule}}, ops: []string{"del rule " + rule.String()}},
		{name: "rule withdrawn", rules: []Rule{rule}, desired: Desired{}, ops: []string{"del rule " + rule.String()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeKernel{routes: slices.Clone(tc.have), rules: slices.Clone(tc.rules), links: map[string]bool{"wg-a": true, "eth0": true}}
			res, err := Apply(f, tc.desired)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tc.wantErr)
			}
			if !slices.Equal(f.ops, tc.ops) {
				t.Fatalf("ops:\n%s\nwant:\n%s", strings.Join(f.ops, "\n"), strings.Join(tc.ops, "\n"))
			}
			if res.Empty() != (len(tc.ops) == 0) {
				t.Fatalf("result %+v with ops %v", res, f.ops)
			}
			if tc.wantErr {
				return
			}
			// Level-based: a second Apply of the same state changes nothing.
			f.ops = nil
			if _, err := Apply(f, tc.desired); err != nil || len(f.ops) != 0 {
				t.Fatalf("second apply: %v, ops %v", err, f.ops)
			}
		})
	}
}

func TestRouterResyncRestores(t *testing.T) {
	f := &fakeKernel{links: map[string]bool{"wg-a": true}}
	r := NewRouter(Options{Kernel: f})
	if _, err := r.Resync(); err != nil || len(f.ops) != 0 {
		t.Fatal("resync before any Set must do nothing")
	}
	b := rt("10.248.0.0/16", "wg-a", "")
	if _, err := r.Set(Desired{Routes: []Route{b}}); err != nil {
		t.Fatal(err)
	}
	f.routes = nil // the kernel dropped it (link went down)
	res, err := r.Resync()
	if err != nil || len(res.Added) != 1 || len(f.routes) != 1 {
		t.Fatalf("resync: %+v %v", res, err)
	}
}

// Package route makes the kernel's routes and policy rules match a desired set, for the
// routes Patronus owns: every route and rule it installs carries the routing protocol
// number Protocol (docs/CONTRACT.md), and only entries with that number are ever changed
// or removed, so the routes of the CNI bridge, the node's uplink and other daemons are
// left alone. Set takes the whole desired set each time (level-based); a Router also
// re-applies the last set periodically and when the kernel reports one of its routes
// deleted (a link going down drops every route through it), so routes the kernel dropped
// come back once their link is back.
//
// The comparison is pure and tested with a fake Kernel; the netlink Kernel works in a
// given network namespace through a handle opened there, so no thread switches namespace.
package route

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Protocol is the rtm_protocol value marking routes and rules Patronus owns
// (`ip route show proto 77`; docs/CONTRACT.md).
const Protocol = 77

// MainTable is the kernel's main routing table.
const MainTable = 254

// Route is one route. Table 0 means MainTable.
type Route struct {
	Dst netip.Prefix
	// Dev is the output interface; Via, if valid, the next hop on it (an underlay or
	// node address); without Via the route is on-link (a WireGuard interface).
	Dev   string
	Via   netip.Addr
	Src   netip.Addr
	Table int
	MTU   int
}

func (r Route) table() int {
	if r.Table == 0 {
		return MainTable
	}
	return r.Table
}

func (r Route) key() routeKey { return routeKey{r.table(), r.Dst.Masked()} }

type routeKey struct {
	table int
	dst   netip.Prefix
}

func (r Route) equal(o Route) bool {
	return r.key() == o.key() && r.Dev == o.Dev && r.Via == o.Via && r.Src == o.Src && r.MTU == o.MTU
}

func (r Route) String() string {
	s := r.Dst.String()
	if r.Via.IsValid() {
		s += " via " + r.Via.String()
	}
	s += " dev " + r.Dev
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	return fmt.Sprintf("%s table %d", s, r.table())
}

// Rule is one policy routing rule: packets matching Src and Dst (either may be zero)
// look up Table. Priority orders rules and, with the selectors, identifies one.
type Rule struct {
	Priority int
	Src, Dst netip.Prefix
	Table    int
}

func (r Rule) String() string {
	return fmt.Sprintf("prio %d from %v to %v lookup %d", r.Priority, r.Src, r.Dst, r.Table)
}

// Kernel is the kernel side: it lists only what carries Protocol.
type Kernel interface {
	Routes() ([]Route, error)
	AddRoute(Route) error // add or replace
	DelRoute(Route) error
	Rules() ([]Rule, error)
	AddRule(Rule) error
	DelRule(Rule) error
}

// Desired is the whole desired state.
type Desired struct {
	Routes []Route
	Rules  []Rule
}

// Result says what a Set changed.
type Result struct {
	Added, Removed           []Route
	RulesAdded, RulesRemoved []Rule
}

// Empty reports whether nothing changed.
func (r Result) Empty() bool {
	return len(r.Added)+len(r.Removed)+len(r.RulesAdded)+len(r.RulesRemoved) == 0
}

// Apply makes k's owned routes and rules equal to d and returns what it changed. A route
// that cannot be installed (its device is missing) does not stop the others; the errors
// are joined.
func Apply(k Kernel, d Desired) (Result, error) {
	var res Result
	want := map[routeKey]Route{}
	for _, r := range d.Routes {
		if !r.Dst.IsValid() || r.Dev == "" {
			return res, fmt.Errorf("route: invalid route %v", r)
		}
		r.Dst = r.Dst.Masked()
		if r.Table == 0 {
			r.Table = MainTable
		}
		if o, dup := want[r.key()]; dup && !o.equal(r) {
			return res, fmt.Errorf("route: two routes for %s in table %d: %v and %v", r.Dst, r.table(), o, r)
		}
		want[r.key()] = r
	}
	have, err := k.Routes()
	if err != nil {
		return res, err
	}
	var errs []error
	haveBy := map[routeKey]Route{}
	for _, h := range have {
		if w, ok := want[h.key()]; !ok {
			if err := k.DelRoute(h); err != nil {
				errs = append(errs, fmt.Errorf("route: delete %v: %w", h, err))
				continue
			}
			res.Removed = append(res.Removed, h)
		} else if w.equal(h) {
			haveBy[h.key()] = h
		}
	}
	keys := slices.SortedFunc(func(yield func(routeKey) bool) {
		for k := range want {
			if !yield(k) {
				return
			}
		}
	}, func(a, b routeKey) int {
		return cmp.Or(cmp.Compare(a.table, b.table), a.dst.Addr().Compare(b.dst.Addr()), cmp.Compare(a.dst.Bits(), b.dst.Bits()))
	})
	for _, key := range keys {
		if _, ok := haveBy[key]; ok {
			continue
		}
		r := want[key]
		if err := k.AddRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("route: add %v: %w", r, err))
			continue
		}
		res.Added = append(res.Added, r)
	}

	wantRules := map[Rule]bool{}
	for _, r := range d.Rules {
		wantRules[r] = true
	}
	rules, err := k.Rules()
	if err != nil {
		return res, errors.Join(append(errs, err)...)
	}
	haveRules := map[Rule]bool{}
	for _, r := range rules {
		if !wantRules[r] || haveRules[r] {
			if err := k.DelRule(r); err != nil {
				errs = append(errs, fmt.Errorf("route: delete rule %v: %w", r, err))
				continue
			}
			res.RulesRemoved = append(res.RulesRemoved, r)
			continue
		}
		haveRules[r] = true
	}
	for _, r := range d.Rules {
		if haveRules[r] {
			continue
		}
		haveRules[r] = true
		if err := k.AddRule(r); err != nil {
			errs = append(errs, fmt.Errorf("route: add rule %v: %w", r, err))
			continue
		}
		res.RulesAdded = append(res.RulesAdded, r)
	}
	return res, errors.Join(errs...)
}

// Options configures a Router.
type Options struct {
	Kernel Kernel
	// Resync is how often the last desired state is re-applied (default 30s).
	Resync time.Duration
	// Events, if set, delivers a value whenever the kernel's routes may have changed
	// (NetlinkKernel.Subscribe); the Router re-applies shortly after.
	Events <-chan struct{}
	Logger *slog.Logger
}

// Router remembers the desired state and keeps the kernel at it.
type Router struct {
	o  Options
	mu sync.Mutex
	d  *Desired
}

// NewRouter makes a router.
func NewRouter(o Options) *Router {
	if o.Resync == 0 {
		o.Resync = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Router{o: o}
}

// Set records d as the desired state and applies it. It may be called any number of
// times with identical state; only differences reach the kernel.
func (r *Router) Set(d Desired) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d.Routes, d.Rules = slices.Clone(d.Routes), slices.Clone(d.Rules)
	r.d = &d
	return r.applyLocked()
}

func (r *Router) applyLocked() (Result, error) {
	if r.d == nil {
		return Result{}, nil
	}
	res, err := Apply(r.o.Kernel, *r.d)
	if !res.Empty() {
		r.o.Logger.Info("routes changed", "added", len(res.Added), "removed", len(res.Removed),
			"rules_added", len(res.RulesAdded), "rules_removed", len(res.RulesRemoved))
	}
	return res, err
}

// Resync re-applies the last desired state (nothing before the first Set).
func (r *Router) Resync() (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applyLocked()
}

// Run re-applies periodically and after kernel events until ctx ends.
func (r *Router) Run(ctx context.Context) error {
	t := time.NewTicker(r.o.Resync)
	defer t.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case _, ok := <-r.o.Events:
			if !ok {
				r.o.Events = nil
				continue
			}
			if debounce == nil {
				debounce = time.After(100 * time.Millisecond)
			}
			continue
		case <-debounce:
			debounce = nil
		}
		if res, err := r.Resync(); err != nil {
			r.o.Logger.Warn("route resync", "err", err)
		} else if !res.Empty() {
			r.o.Logger.Info("routes restored by resync", "added", len(res.Added), "removed", len(res.Removed))
		}
	}
}

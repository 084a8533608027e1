package steer

import (
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/patronus/patronus/paths"
)

func msDuration(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

// Options configures a Steerer.
type Options struct {
	Kernel Kernel
	// Devices maps a path id to its device (the per-path tunnel); paths without one are
	// not steered onto.
	Devices map[string]string
	// Destinations lists each destination cluster's prefixes.
	Destinations map[string][]netip.Prefix
	Logger       *slog.Logger
}

// Steerer keeps the kernel's steering equal to the monitor's selections and the pods'
// classes. Update is cheap when nothing changed (the plan is compared with the last one
// written), so it can run after every monitor tick. Safe for concurrent use.
type Steerer struct {
	o   Options
	log *slog.Logger

	mu      sync.Mutex
	pods    []PodClass
	applied *Plan
	writes  int
}

// New returns a Steerer; nothing is written before the first Update.
func New(o Options) *Steerer {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Steerer{o: o, log: o.Logger}
}

// SetPods replaces the steered pods (applied on the next Update).
func (s *Steerer) SetPods(pods []PodClass) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods = slices.Clone(pods)
}

// Pods returns the steered pods.
func (s *Steerer) Pods() []PodClass {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.pods)
}

// Update writes the plan for snap if it differs from the last one written; changed
// reports a write.
func (s *Steerer) Update(snap paths.Snapshot) (changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ps, pods := Assign(snap, s.o.Devices, s.pods)
	p, err := NewPlan(Spec{Paths: ps, Destinations: s.o.Destinations, Pods: pods})
	if err != nil {
		return false, err
	}
	if s.applied != nil && reflect.DeepEqual(*s.applied, p) {
		return false, nil
	}
	if err := s.o.Kernel.Program(p); err != nil {
		s.applied = nil // rewrite everything next time
		return false, fmt.Errorf("steer: %w", err)
	}
	s.applied = &p
	s.writes++
	s.log.Debug("steering written", "paths", len(p.Paths), "rules", len(p.Steers))
	return true, nil
}

// Plan returns the last plan written (false before the first write).
func (s *Steerer) Plan() (Plan, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.applied == nil {
		return Plan{}, false
	}
	return *s.applied, true
}

// Close removes the steering from the kernel.
func (s *Steerer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applied = nil
	return s.o.Kernel.Remove()
}

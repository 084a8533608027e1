package steer

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/patronus/patronus/dataplane/qos"
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
	// QoS shapes the path devices for the pods' bandwidth guarantees (dataplane/qos): on
	// every path with a known bandwidth while any pod has a guarantee. nil: no shaping.
	QoS qos.Kernel
	// DefaultClass, when set, steers traffic from senders that are not among the pods
	// onto the path selected for this class (rule 4; Defaults).
	DefaultClass paths.Class
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
	shaped  map[string]bool // devices with HTB guarantees
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

// SetDevices replaces the path devices (Options.Devices; applied on the next Update): a
// path left out is not steered onto, e.g. a per-path tunnel that has no session.
func (s *Steerer) SetDevices(devs map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.o.Devices = maps.Clone(devs)
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
	p, err := NewPlan(Spec{Paths: ps, Destinations: s.o.Destinations, Pods: pods, Defaults: Defaults(snap, s.o.Devices, s.o.DefaultClass)})
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
	if s.o.QoS != nil {
		// A path whose guarantees do not fit its bandwidth stays unshaped (reported); the
		// steering itself is written either way.
		if err := s.shape(p); err != nil {
			return true, err
		}
	}
	return true, nil
}

// shape programs the HTB guarantees of the marked pods on every path device with a known
// bandwidth, and removes them where no longer wanted.
func (s *Steerer) shape(p Plan) error {
	var gs []qos.Guarantee
	for _, pod := range p.Marked {
		gs = append(gs, qos.Guarantee{Mark: pod.QoSMark, MinMbps: pod.MinMbps, Pod: pod.Name})
	}
	if len(gs) > 0 {
		gs = append(gs, qos.Guarantee{Mark: ProbeMark, MinMbps: ProbeMinMbps, Pod: "path probes"})
	}
	want := map[string]bool{}
	var errs []error
	for _, pa := range p.Paths {
		if len(gs) == 0 || pa.BandwidthMbps < 1 {
			continue
		}
		want[pa.Dev] = true
		spec := qos.Spec{RateMbps: uint64(pa.BandwidthMbps), Guarantees: gs, MarkMask: PodMask}
		if _, err := qos.Apply(s.o.QoS, pa.Dev, spec, s.log); err != nil {
			errs = append(errs, fmt.Errorf("steer: guarantees on path %s: %w", pa.ID, err))
		}
	}
	for dev := range s.shaped {
		if !want[dev] {
			if err := s.o.QoS.Remove(dev); err != nil {
				errs = append(errs, fmt.Errorf("steer: remove guarantees from %s: %w", dev, err))
				want[dev] = true // try again later
			}
		}
	}
	s.shaped = want
	return errors.Join(errs...)
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
	var errs []error
	if s.o.QoS != nil {
		for dev := range s.shaped {
			errs = append(errs, s.o.QoS.Remove(dev))
		}
		s.shaped = nil
	}
	return errors.Join(append(errs, s.o.Kernel.Remove())...)
}

// Package qos guarantees pods their patronus.io/min-bandwidth-mbps on a path's interface
// (tunnel device or uplink) with HTB: this kernel has no fq/EDT, so bandwidth is shared
// by classes, not by pacing.
//
// Layout on the interface (egress): root qdisc htb 1: (default class 1:2); class 1:1 at
// the path's capacity; under it 1:2 for everything else (rate = capacity − guarantees)
// and one class per guaranteed pod, 1:10, 1:11, ... in mark order (rate = the pod's
// minimum, ceil = the capacity, so an idle guarantee is lent to the rest). Packets reach
// a pod's class by their fwmark (set by the datapath that steers the pod), matched by a
// small cls_bpf classifier per pod: this kernel has neither the fw classifier nor u32's
// mark match.
package qos

import (
	"cmp"
	"fmt"
	"slices"
)

// Guarantee is one pod's minimum.
type Guarantee struct {
	// Mark is the fwmark the pod's packets carry (under Spec.MarkMask).
	Mark    uint32 `json:"mark"`
	MinMbps uint64 `json:"min_mbps"`
	// Pod is for messages (namespace/name).
	Pod string `json:"pod,omitempty"`
}

// Spec is the desired shaping of one interface.
type Spec struct {
	// RateMbps is the path's capacity; HTB must be the bottleneck for guarantees to hold,
	// so this should not exceed what the path really carries.
	RateMbps   uint64
	Guarantees []Guarantee
	// MarkMask selects the mark bits that identify a pod (default all).
	MarkMask uint32
}

// Class is one HTB class of the plan. Rates in bits per second.
type Class struct {
	Minor   uint16
	Parent  uint16 // 0 = the root qdisc
	RateBps uint64
	CeilBps uint64
	// Mark is matched to this class (pod classes only).
	Mark uint32
	Pod  string
}

// Plan is what Apply programs.
type Plan struct {
	Default  uint16 // the default class minor
	Mask     uint32
	Classes  []Class // parent first
	PodClass []Class // the subset with a mark, for filters
}

const (
	rootMinor     = 1
	defaultMinor  = 2
	firstPodMinor = 0x10
	minDefaultBps = 1_000_000
)

// NewPlan checks spec and lays out the classes.
func NewPlan(spec Spec) (Plan, error) {
	if spec.RateMbps == 0 {
		return Plan{}, fmt.Errorf("qos: capacity must be > 0 Mbps")
	}
	mask := spec.MarkMask
	if mask == 0 {
		mask = 0xffffffff
	}
	gs := slices.Clone(spec.Guarantees)
	slices.SortFunc(gs, func(a, b Guarantee) int { return cmp.Compare(a.Mark, b.Mark) })
	var sum uint64
	for i, g := range gs {
		switch {
		case g.Mark&mask == 0:
			return Plan{}, fmt.Errorf("qos: pod %q: mark %#x has no bits under mask %#x", g.Pod, g.Mark, mask)
		case g.MinMbps == 0:
			return Plan{}, fmt.Errorf("qos: pod %q: min bandwidth must be > 0", g.Pod)
		case i > 0 && gs[i-1].Mark&mask == g.Mark&mask:
			return Plan{}, fmt.Errorf("qos: pods %q and %q share mark %#x", gs[i-1].Pod, g.Pod, g.Mark&mask)
		}
		sum += g.MinMbps
	}
	if sum > spec.RateMbps {
		return Plan{}, fmt.Errorf("qos: guarantees total %d Mbps, more than the path's %d Mbps", sum, spec.RateMbps)
	}
	if len(gs) > 0xffff-firstPodMinor {
		return Plan{}, fmt.Errorf("qos: %d guarantees: too many classes", len(gs))
	}
	capBps := spec.RateMbps * 1_000_000
	p := Plan{Default: defaultMinor, Mask: mask, Classes: []Class{
		{Minor: rootMinor, RateBps: capBps, CeilBps: capBps},
		{Minor: defaultMinor, Parent: rootMinor, RateBps: max(capBps-sum*1_000_000, minDefaultBps), CeilBps: capBps},
	}}
	for i, g := range gs {
		c := Class{Minor: uint16(firstPodMinor + i), Parent: rootMinor, RateBps: g.MinMbps * 1_000_000, CeilBps: capBps,
			Mark: g.Mark & mask, Pod: g.Pod}
		p.Classes = append(p.Classes, c)
		p.PodClass = append(p.PodClass, c)
	}
	return p, nil
}

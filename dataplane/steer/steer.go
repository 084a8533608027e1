// Package steer sends each local pod's traffic to a remote cluster onto the path chosen for
// the pod's QoS class (package paths), and keeps existing connections on their path until
// that path fails.
//
// Every path has a mark (bits PathMask of the packet mark) and its own routing table that
// routes the destination cluster's prefixes through the path's device (a per-path tunnel);
// a policy rule `fwmark <mark>/PathMask lookup <table>` joins them. Chain `steer` of table
// `inet patronus` (hook prerouting, priority mangle) sets the marks:
//
//  1. a packet arriving from a path's device records that path in its connection's ct mark
//     (connections opened from the remote side are answered on the path they came by) and
//     carries its mark (for reverse-path filtering with src_valid_mark);
//  2. a packet whose connection's ct mark names a path that is up takes that path's mark:
//     established connections stay where they are, also when the class's selection moves
//     to a better path (no flapping of live flows);
//  3. otherwise a packet from a steered pod to a destination prefix takes the mark of the
//     path selected for the pod, and its connection remembers it;
//  4. otherwise (a sender the plan does not list, e.g. a pod created since the last
//     pod refresh) a packet to a destination prefix takes the path selected for the
//     default class, when Spec.Defaults names one, and its connection remembers it.
//
// When a path goes down, rule 2 no longer matches its connections, so their next packet
// falls to rule 3 and moves to the pod's current selection: failover under a running flow
// costs the detection time plus one rule rewrite.
//
// The plan is pure (NewPlan, tested with tables); Kernel writes it, Netlink in a network
// namespace. IPv4 only.
package steer

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/patronus/patronus/paths"
)

// Names and numbers in the kernel (docs/CONTRACT.md).
const (
	// Table is the shared nftables table; Chain is the one this package owns in it.
	Table = "patronus"
	Chain = "steer"
	// PathMask is the part of the packet and connection mark that names a path.
	PathMask uint32 = 0x00ff0000
	// PodMask is the part of the packet mark that names a pod with a bandwidth guarantee
	// (patronus.io/min-bandwidth-mbps), for the HTB classes of dataplane/qos on the path's
	// device: the n-th guaranteed pod (by address, from 1) has n<<8.
	PodMask uint32 = 0x0000ff00
	// ProbeMark is the highest PodMask value, reserved for the path probes (the prober's
	// sockets set it): on a shaped device they get a class of their own, so a path
	// saturated by its own traffic is not declared down for lack of probe answers.
	ProbeMark uint32 = PodMask
	// ProbeMinMbps is the probes' guaranteed rate on a shaped device.
	ProbeMinMbps = 1
	// RouteProtocol marks the rules and routes this package owns (`ip rule show proto 79`).
	RouteProtocol = 79
	// TableBase + n is the routing table of the path with mark number n (1..255).
	TableBase = 7900
	// RulePriority is the priority of the fwmark rules (before main at 32766).
	RulePriority = 7900
)

// Path is one path as steering sees it.
type Path struct {
	ID string `json:"path_id"`
	// Dst is the destination cluster id.
	Dst string `json:"dst"`
	// Dev is the interface the path's traffic leaves by (its tunnel device).
	Dev string `json:"dev"`
	// Via is an optional next hop on Dev.
	Via netip.Addr `json:"via,omitzero"`
	// Up: established connections may stay on the path.
	Up bool `json:"up"`
	// BandwidthMbps is the path's capacity: with guaranteed pods, Dev is shaped to it
	// (dataplane/qos); 0 = unknown, no shaping.
	BandwidthMbps float64 `json:"bandwidth_mbps,omitempty"`
}

// Pod is one local pod and the path each destination cluster's traffic takes (no entry:
// the pod's traffic to that cluster is not steered and follows the main table).
type Pod struct {
	Name string            `json:"name"`
	IP   netip.Addr        `json:"ip"`
	Via  map[string]string `json:"via"` // destination cluster → path id
	// QoSMark (under PodMask, 0 = none) is set on every packet of the pod, for its
	// bandwidth guarantee of MinMbps.
	QoSMark uint32 `json:"qos_mark,omitempty"`
	MinMbps uint64 `json:"min_mbps,omitempty"`
}

// Spec is the desired steering of a node.
type Spec struct {
	// Paths in a stable order: the n-th path (from 1) has mark n<<16 and table
	// TableBase+n, so reordering paths re-marks their connections.
	Paths []Path
	// Destinations lists each destination cluster's prefixes.
	Destinations map[string][]netip.Prefix
	Pods         []Pod
	// Defaults is, per destination cluster, the path of traffic from senders not in Pods
	// (rule 4; the default QoS class's selection). Empty: such traffic is not steered.
	Defaults map[string]string
}

// PlannedPath is a path with its mark, table and routes.
type PlannedPath struct {
	Path
	Mark     uint32
	Table    int
	Prefixes []netip.Prefix
}

// Steer is one rule of step 3: traffic from Pod to Prefix takes Mark.
type Steer struct {
	Pod    netip.Addr
	Prefix netip.Prefix
	Mark   uint32
	PathID string
	Name   string
}

// Plan is what Kernel.Program writes.
type Plan struct {
	Paths  []PlannedPath
	Steers []Steer
	// Marked are the pods with a QoS mark (rule 0: every packet of the pod gets it).
	Marked []Pod
	// Defaults are rule 4's steers (Pod invalid: any sender), after every pod's.
	Defaults []Steer
}

// MarkOf returns the mark of the n-th path (from 1).
func MarkOf(n int) uint32 { return uint32(n) << 16 }

// NewPlan checks spec and lays out marks, tables and rules.
func NewPlan(spec Spec) (Plan, error) {
	if len(spec.Paths) > int(PathMask>>16) {
		return Plan{}, fmt.Errorf("steer: %d paths: at most %d", len(spec.Paths), PathMask>>16)
	}
	var p Plan
	byID := map[string]PlannedPath{}
	devs := map[string]string{}
	for i, pa := range spec.Paths {
		switch {
		case pa.ID == "" || pa.Dst == "" || pa.Dev == "":
			return Plan{}, fmt.Errorf("steer: path %+v: id, dst and dev are required", pa)
		case len(pa.Dev) > 15:
			return Plan{}, fmt.Errorf("steer: path %s: device name %q is longer than 15 characters", pa.ID, pa.Dev)
		case byID[pa.ID].ID != "":
			return Plan{}, fmt.Errorf("steer: path %s listed twice", pa.ID)
		case devs[pa.Dev] != "":
			return Plan{}, fmt.Errorf("steer: paths %s and %s share device %s", devs[pa.Dev], pa.ID, pa.Dev)
		case pa.Via.IsValid() && !pa.Via.Is4():
			return Plan{}, fmt.Errorf("steer: path %s: next hop %s is not IPv4", pa.ID, pa.Via)
		}
		devs[pa.Dev] = pa.ID
		var pfx []netip.Prefix
		for _, d := range spec.Destinations[pa.Dst] {
			if !d.Addr().Is4() {
				return Plan{}, fmt.Errorf("steer: destination %s: prefix %s is not IPv4", pa.Dst, d)
			}
			pfx = append(pfx, d.Masked())
		}
		slices.SortFunc(pfx, comparePrefix)
		pp := PlannedPath{Path: pa, Mark: MarkOf(i + 1), Table: TableBase + i + 1, Prefixes: slices.Compact(pfx)}
		byID[pa.ID] = pp
		p.Paths = append(p.Paths, pp)
	}
	seen := map[netip.Addr]string{}
	for _, pod := range spec.Pods {
		if !pod.IP.Is4() {
			return Plan{}, fmt.Errorf("steer: pod %s: address %s is not IPv4", pod.Name, pod.IP)
		}
		if other, dup := seen[pod.IP]; dup {
			return Plan{}, fmt.Errorf("steer: pods %s and %s share address %s", other, pod.Name, pod.IP)
		}
		seen[pod.IP] = pod.Name
		if pod.QoSMark != 0 {
			if pod.QoSMark&^PodMask != 0 || pod.QoSMark == ProbeMark {
				return Plan{}, fmt.Errorf("steer: pod %s: QoS mark %#x outside %#x", pod.Name, pod.QoSMark, PodMask)
			}
			p.Marked = append(p.Marked, Pod{Name: pod.Name, IP: pod.IP, QoSMark: pod.QoSMark, MinMbps: pod.MinMbps})
		}
		dsts := make([]string, 0, len(pod.Via))
		for d := range pod.Via {
			dsts = append(dsts, d)
		}
		slices.Sort(dsts)
		for _, d := range dsts {
			id := pod.Via[d]
			pp, ok := byID[id]
			switch {
			case id == "":
				continue
			case !ok:
				return Plan{}, fmt.Errorf("steer: pod %s: unknown path %q", pod.Name, id)
			case pp.Dst != d:
				return Plan{}, fmt.Errorf("steer: pod %s: path %s leads to %s, not %s", pod.Name, id, pp.Dst, d)
			}
			for _, pfx := range pp.Prefixes {
				p.Steers = append(p.Steers, Steer{Pod: pod.IP, Prefix: pfx, Mark: pp.Mark, PathID: id, Name: pod.Name})
			}
		}
	}
	for _, d := range slices.Sorted(maps.Keys(spec.Defaults)) {
		id := spec.Defaults[d]
		pp, ok := byID[id]
		switch {
		case id == "":
			continue
		case !ok:
			return Plan{}, fmt.Errorf("steer: default path of %s: unknown path %q", d, id)
		case pp.Dst != d:
			return Plan{}, fmt.Errorf("steer: default path %s leads to %s, not %s", id, pp.Dst, d)
		}
		for _, pfx := range pp.Prefixes {
			p.Defaults = append(p.Defaults, Steer{Prefix: pfx, Mark: pp.Mark, PathID: id, Name: "default"})
		}
	}
	slices.SortFunc(p.Marked, func(a, b Pod) int { return a.IP.Compare(b.IP) })
	slices.SortFunc(p.Steers, func(a, b Steer) int {
		return cmp.Or(a.Pod.Compare(b.Pod), comparePrefix(a.Prefix, b.Prefix))
	})
	return p, nil
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// PodClass is a pod's QoS requirement, as the agent reads it from its annotations.
type PodClass struct {
	Name  string
	IP    netip.Addr
	Class paths.Class
	// MaxLatencyMs is patronus.io/max-latency-ms (0 = none); the monitor must have the
	// matching paths.Requirement (Requirements).
	MaxLatencyMs float64
	// MinBandwidthMbps is patronus.io/min-bandwidth-mbps (0 = none).
	MinBandwidthMbps uint64
}

// Requirements lists the extra requirements the monitor must select for: one per
// destination and distinct (class, max-latency) of the pods that have a max-latency.
func Requirements(pods []PodClass, dsts []string) []paths.Requirement {
	var out []paths.Requirement
	for _, d := range dsts {
		for _, p := range pods {
			if p.MaxLatencyMs <= 0 {
				continue
			}
			r := paths.Requirement{Dst: d, Class: p.Class, MaxLatency: msDuration(p.MaxLatencyMs)}
			if !slices.Contains(out, r) {
				out = append(out, r)
			}
		}
	}
	return out
}

// Assign turns the monitor's state into Spec.Paths and Spec.Pods: every path with its
// device (devs by path id; a path without one is left out) and whether it is up, every pod
// with the path selected for its requirement towards each destination.
func Assign(snap paths.Snapshot, devs map[string]string, pods []PodClass) ([]Path, []Pod) {
	var ps []Path
	for _, p := range snap.Paths {
		if dev := devs[p.ID]; dev != "" {
			ps = append(ps, Path{ID: p.ID, Dst: p.Dst, Dev: dev, Up: p.State == paths.StateUp, BandwidthMbps: p.BandwidthMbps})
		}
	}
	type key struct {
		dst   string
		class paths.Class
		maxMs float64
	}
	sel := map[key]string{}
	var dsts []string
	for _, s := range snap.Selections {
		sel[key{s.Dst, s.Class, s.MaxLatencyMs}] = s.PathID
		if !slices.Contains(dsts, s.Dst) {
			dsts = append(dsts, s.Dst)
		}
	}
	// Guaranteed pods are numbered by address, so a pod keeps its mark while others come
	// and go before it only.
	var guaranteed []netip.Addr
	for _, pc := range pods {
		if pc.MinBandwidthMbps > 0 {
			guaranteed = append(guaranteed, pc.IP)
		}
	}
	slices.SortFunc(guaranteed, netip.Addr.Compare)
	out := make([]Pod, 0, len(pods))
	for _, pc := range pods {
		pod := Pod{Name: pc.Name, IP: pc.IP, Via: map[string]string{}}
		if i, ok := slices.BinarySearchFunc(guaranteed, pc.IP, netip.Addr.Compare); ok && pc.MinBandwidthMbps > 0 && i < int(PodMask>>8)-1 {
			pod.QoSMark, pod.MinMbps = uint32(i+1)<<8, pc.MinBandwidthMbps
		}
		for _, d := range dsts {
			id, ok := sel[key{d, pc.Class, pc.MaxLatencyMs}]
			if !ok { // the requirement is not (yet) known to the monitor: the plain class
				id = sel[key{d, pc.Class, 0}]
			}
			if id != "" && devs[id] != "" {
				pod.Via[d] = id
			}
		}
		out = append(out, pod)
	}
	return ps, out
}

// Defaults is, per destination of snap's selections, the path selected for class without
// a max-latency (paths.Snapshot.Selected) when a device carries it (Spec.Defaults).
// Empty class: none (Options.DefaultClass unset: senders that are no pod are not steered).
func Defaults(snap paths.Snapshot, devs map[string]string, class paths.Class) map[string]string {
	if class == "" {
		return nil
	}
	out := snap.Selected(class)
	maps.DeleteFunc(out, func(_, id string) bool { return devs[id] == "" })
	return out
}

// Package qos parses and validates the pod QoS annotations of docs/CONTRACT.md
// (patronus.io/qos-class, patronus.io/max-latency-ms, patronus.io/min-bandwidth-mbps).
//
// It is pure: no Kubernetes types, no I/O. A bad annotation never fails the pod; Parse
// falls back to defaults and returns one *AnnotationError per bad value so the caller can
// report it (the agent turns each into a Kubernetes Event on the pod).
package qos

import (
	"fmt"
	"strconv"
	"strings"
)

// Annotation keys (docs/CONTRACT.md, "Kubernetes annotations and labels").
const (
	AnnotationClass        = "patronus.io/qos-class"
	AnnotationMaxLatency   = "patronus.io/max-latency-ms"
	AnnotationMinBandwidth = "patronus.io/min-bandwidth-mbps"
)

// Class is a pod's traffic class, which path selection and marking act on.
type Class string

// The classes the seed names.
const (
	LatencySensitive Class = "latency-sensitive"
	Bulk             Class = "bulk"
	BestEffort       Class = "best-effort"
)

// DefaultClass is used when neither the pod nor the CNI config (sdwan.default_qos_class)
// names one.
const DefaultClass = BestEffort

// Bounds of the numeric annotations. A latency bound above a minute or a bandwidth
// floor above 100 Gbit/s is surely a typo (seconds, or bits instead of megabits).
const (
	MaxLatencyLimitMs     = 60_000
	MinBandwidthLimitMbps = 100_000
)

// Classes returns every valid class, in the order messages list them.
func Classes() []Class { return []Class{LatencySensitive, Bulk, BestEffort} }

// Valid reports whether c is one of Classes.
func (c Class) Valid() bool {
	switch c {
	case LatencySensitive, Bulk, BestEffort:
		return true
	}
	return false
}

func acceptedClasses() string {
	cs := Classes()
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = string(c)
	}
	return strings.Join(s, ", ")
}

// ParseClass validates a class name (exact, lower case, as Kubernetes users write it).
func ParseClass(s string) (Class, error) {
	c := Class(s)
	if !c.Valid() {
		return "", fmt.Errorf("invalid QoS class %q: accepted values are %s", s, acceptedClasses())
	}
	return c, nil
}

// Spec is what a pod asks for. Zero MaxLatencyMs / MinBandwidthMbps mean "not set".
type Spec struct {
	Class            Class  `json:"class"`
	MaxLatencyMs     uint32 `json:"maxLatencyMs,omitempty"`
	MinBandwidthMbps uint32 `json:"minBandwidthMbps,omitempty"`
}

// AnnotationError describes one invalid annotation value. Its message names the annotation
// and the accepted values, which is what the user needs to fix the pod.
type AnnotationError struct {
	Annotation string
	Value      string
	Accepted   string // human-readable list or range of accepted values
	Fallback   string // what is used instead
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("invalid value %q for annotation %s: accepted values are %s; using %s",
		e.Value, e.Annotation, e.Accepted, e.Fallback)
}

// Parse reads the QoS annotations. def is the class used when the pod names none or an
// invalid one (it must be valid; an invalid def is replaced by DefaultClass). The returned
// Spec is always usable; errs lists every invalid annotation, in a fixed order.
func Parse(annotations map[string]string, def Class) (spec Spec, errs []*AnnotationError) {
	if !def.Valid() {
		def = DefaultClass
	}
	spec.Class = def
	if v, ok := annotations[AnnotationClass]; ok {
		if c, err := ParseClass(strings.TrimSpace(v)); err == nil {
			spec.Class = c
		} else {
			errs = append(errs, &AnnotationError{Annotation: AnnotationClass, Value: v,
				Accepted: acceptedClasses(), Fallback: "the default class " + string(def)})
		}
	}
	if v, ok := annotations[AnnotationMaxLatency]; ok {
		n, err := parseBounded(v, MaxLatencyLimitMs)
		if err != nil {
			errs = append(errs, &AnnotationError{Annotation: AnnotationMaxLatency, Value: v,
				Accepted: fmt.Sprintf("a whole number of milliseconds from 1 to %d", MaxLatencyLimitMs), Fallback: "no latency bound"})
		}
		spec.MaxLatencyMs = n
	}
	if v, ok := annotations[AnnotationMinBandwidth]; ok {
		n, err := parseBounded(v, MinBandwidthLimitMbps)
		if err != nil {
			errs = append(errs, &AnnotationError{Annotation: AnnotationMinBandwidth, Value: v,
				Accepted: fmt.Sprintf("a whole number of Mbit/s from 1 to %d", MinBandwidthLimitMbps), Fallback: "no bandwidth floor"})
		}
		spec.MinBandwidthMbps = n
	}
	return spec, errs
}

// parseBounded parses a decimal integer in 1..limit; surrounding spaces are tolerated
// because YAML block scalars easily add them, signs and units are not.
func parseBounded(s string, limit uint64) (uint32, error) {
	t := strings.TrimSpace(s)
	if t == "" || t[0] == '+' || t[0] == '-' {
		return 0, fmt.Errorf("not a positive whole number: %q", s)
	}
	n, err := strconv.ParseUint(t, 10, 32)
	if err != nil {
		return 0, err
	}
	if n < 1 || n > limit {
		return 0, fmt.Errorf("%d out of range 1..%d", n, limit)
	}
	return uint32(n), nil
}

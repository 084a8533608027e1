package paths

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// Weights shape the score. Each term is a penalty in points that grows linearly with its
// measurement up to the "full" value and then stays at its weight:
//
//	score = 100 − Latency·min(1, SRTT/LatencyFull) − Jitter·min(1, jitter/JitterFull)
//	            − Loss·min(1, loss/LossFull) − L7·max(l7 terms), clamped to 0..100
//	l7 terms = min(1, p99/L7LatencyFull), min(1, error_rate/ErrorRateFull),
//	           min(1, connection_failures/ConnFailuresFull)
//
// A path that is down scores 0; one never answered scores 0 too.
type Weights struct {
	Latency          float64       `json:"latency"`
	LatencyFull      time.Duration `json:"latency_full"`
	Jitter           float64       `json:"jitter"`
	JitterFull       time.Duration `json:"jitter_full"`
	Loss             float64       `json:"loss"`
	LossFull         float64       `json:"loss_full"`
	L7               float64       `json:"l7"`
	L7LatencyFull    time.Duration `json:"l7_latency_full"`
	ErrorRateFull    float64       `json:"error_rate_full"`
	ConnFailuresFull float64       `json:"conn_failures_full"`
}

func (w Weights) withDefaults() Weights {
	if w.Latency == 0 && w.Jitter == 0 && w.Loss == 0 && w.L7 == 0 {
		w.Latency, w.Jitter, w.Loss, w.L7 = 40, 15, 40, 30
	}
	if w.LatencyFull <= 0 {
		w.LatencyFull = 300 * time.Millisecond
	}
	if w.JitterFull <= 0 {
		w.JitterFull = 50 * time.Millisecond
	}
	if w.LossFull <= 0 {
		w.LossFull = 0.10
	}
	if w.L7LatencyFull <= 0 {
		w.L7LatencyFull = time.Second
	}
	if w.ErrorRateFull <= 0 {
		w.ErrorRateFull = 0.05
	}
	if w.ConnFailuresFull <= 0 {
		w.ConnFailuresFull = 10
	}
	return w
}

// Score computes a path's score from its stats and, if not nil, fresh L7 metrics.
func Score(w Weights, st Stats, l7 *L7) float64 {
	w = w.withDefaults()
	if st.State != StateUp {
		return 0
	}
	frac := func(v, full float64) float64 { return math.Min(1, math.Max(0, v/full)) }
	s := 100.0
	s -= w.Latency * frac(float64(st.SRTT), float64(w.LatencyFull))
	s -= w.Jitter * frac(float64(st.Jitter), float64(w.JitterFull))
	s -= w.Loss * frac(st.Loss, w.LossFull)
	if l7 != nil {
		worst := math.Max(frac(l7.RequestLatencyP99Ms, float64(w.L7LatencyFull)/float64(time.Millisecond)),
			math.Max(frac(l7.ErrorRate, w.ErrorRateFull), frac(float64(l7.ConnectionFailures), w.ConnFailuresFull)))
		s -= w.L7 * worst
	}
	return math.Round(math.Max(0, math.Min(100, s))*10) / 10
}

// L7 is one report of application-level metrics for a path, as fed over the metrics
// socket (one JSON object per line; docs/CONTRACT.md).
type L7 struct {
	PathID              string  `json:"path_id"`
	RequestLatencyP99Ms float64 `json:"request_latency_p99_ms"`
	ErrorRate           float64 `json:"error_rate"`
	RequestsPerSecond   float64 `json:"requests_per_second"`
	// ConnectionFailures since the previous report for this path.
	ConnectionFailures uint64 `json:"connection_failures"`
}

// FieldError names the offending field of an L7 report.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return "field " + e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// ParseL7 decodes and validates one line. Every field except path_id is optional (0);
// unknown fields, negative values, an error_rate above 1 and NaN are rejected with a
// FieldError naming the field.
func ParseL7(line []byte) (L7, error) {
	line = bytes.TrimSpace(line)
	// Decode into raw values first so a type error names its field.
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(line, &raw); err != nil {
		return L7{}, fmt.Errorf("not a JSON object: %w", err)
	}
	var m L7
	known := map[string]any{
		"path_id": &m.PathID, "request_latency_p99_ms": &m.RequestLatencyP99Ms, "error_rate": &m.ErrorRate,
		"requests_per_second": &m.RequestsPerSecond, "connection_failures": &m.ConnectionFailures,
	}
	for k, v := range raw {
		dst, ok := known[k]
		if !ok {
			return L7{}, &FieldError{k, errors.New("unknown field")}
		}
		if err := json.Unmarshal(v, dst); err != nil {
			return L7{}, &FieldError{k, fmt.Errorf("wrong type: %s", v)}
		}
	}
	if m.PathID == "" {
		return L7{}, &FieldError{"path_id", errors.New("required")}
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"request_latency_p99_ms", m.RequestLatencyP99Ms}, {"error_rate", m.ErrorRate}, {"requests_per_second", m.RequestsPerSecond}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 {
			return L7{}, &FieldError{f.name, fmt.Errorf("%v: must be a finite number ≥ 0", f.v)}
		}
	}
	if m.ErrorRate > 1 {
		return L7{}, &FieldError{"error_rate", fmt.Errorf("%v: a ratio within 0..1", m.ErrorRate)}
	}
	return m, nil
}

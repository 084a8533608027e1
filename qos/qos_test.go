package qos

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name        string
		ann         map[string]string
		def         Class
		want        Spec
		wantErrKeys []string
	}{
		{name: "no annotations uses default", ann: nil, def: Bulk, want: Spec{Class: Bulk}},
		{name: "invalid default falls back to best-effort", ann: nil, def: "gold", want: Spec{Class: BestEffort}},
		{name: "empty default falls back to best-effort", ann: map[string]string{}, def: "", want: Spec{Class: BestEffort}},
		{name: "seed example", def: BestEffort,
			ann:  map[string]string{AnnotationClass: "latency-sensitive", AnnotationMaxLatency: "20", AnnotationMinBandwidth: "10"},
			want: Spec{Class: LatencySensitive, MaxLatencyMs: 20, MinBandwidthMbps: 10}},
		{name: "bulk", def: BestEffort, ann: map[string]string{AnnotationClass: "bulk"}, want: Spec{Class: Bulk}},
		{name: "best-effort explicit", def: Bulk, ann: map[string]string{AnnotationClass: "best-effort"}, want: Spec{Class: BestEffort}},
		{name: "surrounding spaces tolerated", def: BestEffort,
			ann:  map[string]string{AnnotationClass: " bulk\n", AnnotationMaxLatency: " 5 "},
			want: Spec{Class: Bulk, MaxLatencyMs: 5}},
		{name: "unknown class", def: BestEffort, ann: map[string]string{AnnotationClass: "gold"},
			want: Spec{Class: BestEffort}, wantErrKeys: []string{AnnotationClass}},
		{name: "class is case sensitive", def: Bulk, ann: map[string]string{AnnotationClass: "Bulk"},
			want: Spec{Class: Bulk}, wantErrKeys: []string{AnnotationClass}},
		{name: "empty class", def: BestEffort, ann: map[string]string{AnnotationClass: ""},
			want: Spec{Class: BestEffort}, wantErrKeys: []string{AnnotationClass}},
		{name: "latency with unit", def: BestEffort, ann: map[string]string{AnnotationMaxLatency: "20ms"},
			want: Spec{Class: BestEffort}, wantErrKeys: []string{AnnotationMaxLatency}},
		{name: "latency zero", def: BestEffort, ann: map[string]string{AnnotationMaxLatency: "0"},
			want: Spec{Class: BestEffort}, wantErrKeys: []string{AnnotationMaxLatency}},
		{name: "latency negative", def: BestEffort, ann: map[string]string{AnnotationMaxLatency: "-1"},
			want: Spec{Class: BestEffort}, wantErrKeys: []string{AnnotationMaxLatency}},
		{name: "latency plus sign", def: BestEffort, ann: map[string]string{AnnotationMaxLatency: "+3"},
			want: Spec{Class: BestEffort}, wantErrKeys: []string{AnnotationMaxLatency}},
		{name: "latency at limit", def: BestEffort, ann: map[string]string{AnnotationMaxLatency: "60000"},
			want: Spec{Class: BestEffort, MaxLatencyMs: 60000}},
		{name: "latency above limit", def: BestEffort, ann: map[string]string{AnnotationMaxLatency: "60001"},
			want: Spec{Class: BestEffort}, wantErrKeys: []string{AnnotationMaxLatency}},
		{name: "latency overflows uint32", def: BestEffort, ann: map[string]string{AnnotationMaxLatency: "99999999999"},
			want: Spec{Class: BestEffort}, wantErrKeys: []string{AnnotationMaxLatency}},
		{name: "bandwidth fractional", def: BestEffort, ann: map[string]string{AnnotationMinBandwidth: "1.5"},
			want: Spec{Class: BestEffort}, wantErrKeys: []string{AnnotationMinBandwidth}},
		{name: "bandwidth at limit", def: BestEffort, ann: map[string]string{AnnotationMinBandwidth: "100000"},
			want: Spec{Class: BestEffort, MinBandwidthMbps: 100000}},
		{name: "all three bad, others kept independent", def: Bulk,
			ann:         map[string]string{AnnotationClass: "fast", AnnotationMaxLatency: "x", AnnotationMinBandwidth: ""},
			want:        Spec{Class: Bulk},
			wantErrKeys: []string{AnnotationClass, AnnotationMaxLatency, AnnotationMinBandwidth}},
		{name: "one bad one good", def: BestEffort,
			ann:         map[string]string{AnnotationClass: "latency-sensitive", AnnotationMinBandwidth: "ten"},
			want:        Spec{Class: LatencySensitive},
			wantErrKeys: []string{AnnotationMinBandwidth}},
		{name: "unrelated annotations ignored", def: BestEffort,
			ann: map[string]string{"patronus.io/qos": "bulk", "example.com/x": "y"}, want: Spec{Class: BestEffort}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, errs := Parse(tc.ann, tc.def)
			if got != tc.want {
				t.Errorf("spec: got %+v, want %+v", got, tc.want)
			}
			var keys []string
			for _, e := range errs {
				keys = append(keys, e.Annotation)
				msg := e.Error()
				// The message must name the annotation, the bad value and what is accepted.
				if !strings.Contains(msg, e.Annotation) || !strings.Contains(msg, "accepted values are") || !strings.Contains(msg, e.Value) {
					t.Errorf("message %q does not name annotation, value and accepted values", msg)
				}
			}
			if !reflect.DeepEqual(keys, tc.wantErrKeys) {
				t.Errorf("errors for %v, want %v", keys, tc.wantErrKeys)
			}
		})
	}
}

func TestClassMessageListsAllClasses(t *testing.T) {
	_, errs := Parse(map[string]string{AnnotationClass: "gold"}, BestEffort)
	if len(errs) != 1 {
		t.Fatalf("want 1 error, got %v", errs)
	}
	for _, c := range Classes() {
		if !strings.Contains(errs[0].Error(), string(c)) {
			t.Errorf("message %q does not list %s", errs[0].Error(), c)
		}
	}
	if !strings.Contains(errs[0].Error(), "default class best-effort") {
		t.Errorf("message %q does not name the fallback", errs[0].Error())
	}
}

func TestParseClass(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Class
		ok   bool
	}{
		{"latency-sensitive", LatencySensitive, true},
		{"bulk", Bulk, true},
		{"best-effort", BestEffort, true},
		{"", "", false},
		{"BestEffort", "", false},
		{"best_effort", "", false},
	} {
		got, err := ParseClass(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseClass(%q) = %q, %v; want %q ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

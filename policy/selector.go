package policy

import (
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// selector is a compiled metav1.LabelSelector. It is evaluated millions of times when a
// large cluster is compiled, so it is a flat list of requirements over plain maps rather
// than apimachinery's labels.Selector, which allocates on construction and validates
// label syntax we do not need (the API server already did).
type selector struct {
	reqs []requirement
}

type requirement struct {
	key    string
	op     metav1.LabelSelectorOperator
	values []string // In/NotIn; for matchLabels one value with op In
}

// compileSelector turns s into a selector. A nil s is not accepted here: callers decide
// what a missing selector means (it differs between spec.podSelector and peers).
// An empty selector matches everything.
func compileSelector(s *metav1.LabelSelector) (selector, error) {
	var sel selector
	keys := make([]string, 0, len(s.MatchLabels))
	for k := range s.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic evaluation order; cheap, selectors are small
	for _, k := range keys {
		sel.reqs = append(sel.reqs, requirement{key: k, op: metav1.LabelSelectorOpIn, values: []string{s.MatchLabels[k]}})
	}
	for i, e := range s.MatchExpressions {
		switch e.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(e.Values) == 0 {
				return selector{}, fmt.Errorf("matchExpressions[%d]: operator %s needs at least one value", i, e.Operator)
			}
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(e.Values) != 0 {
				return selector{}, fmt.Errorf("matchExpressions[%d]: operator %s takes no values", i, e.Operator)
			}
		default:
			return selector{}, fmt.Errorf("matchExpressions[%d]: unknown operator %q", i, e.Operator)
		}
		if e.Key == "" {
			return selector{}, fmt.Errorf("matchExpressions[%d]: empty key", i)
		}
		sel.reqs = append(sel.reqs, requirement{key: e.Key, op: e.Operator, values: e.Values})
	}
	return sel, nil
}

// empty reports whether the selector matches every label set.
func (s selector) empty() bool { return len(s.reqs) == 0 }

// matches reports whether labels satisfy every requirement (they are ANDed).
func (s selector) matches(labels map[string]string) bool {
	for i := range s.reqs {
		r := &s.reqs[i]
		v, ok := labels[r.key]
		switch r.op {
		case metav1.LabelSelectorOpIn:
			if !ok || !slices.Contains(r.values, v) {
				return false
			}
		case metav1.LabelSelectorOpNotIn:
			// A missing key satisfies NotIn, as in Kubernetes.
			if ok && slices.Contains(r.values, v) {
				return false
			}
		case metav1.LabelSelectorOpExists:
			if !ok {
				return false
			}
		case metav1.LabelSelectorOpDoesNotExist:
			if ok {
				return false
			}
		}
	}
	return true
}

// writeKey writes a canonical text form of the selector, for caching its results.
// Requirements are in a fixed order (matchLabels sorted, then matchExpressions as given),
// so equal selectors written the same way get equal keys.
func (s selector) writeKey(b *strings.Builder) {
	for _, r := range s.reqs {
		fmt.Fprintf(b, "%q %s %q;", r.key, r.op, r.values)
	}
}

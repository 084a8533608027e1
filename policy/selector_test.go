package policy

import (
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestSelectorMatches(t *testing.T) {
	req := func(key string, op metav1.LabelSelectorOperator, values ...string) metav1.LabelSelectorRequirement {
		return metav1.LabelSelectorRequirement{Key: key, Operator: op, Values: values}
	}
	set := []map[string]string{
		nil,
		{"app": "web"},
		{"app": "db"},
		{"app": "web", "tier": "front"},
		{"tier": "back"},
		{"app": ""},
	}
	cases := []struct {
		name string
		sel  metav1.LabelSelector
		want []bool // per label set above
	}{
		{"empty matches all", metav1.LabelSelector{}, []bool{true, true, true, true, true, true}},
		{"matchLabels", metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, []bool{false, true, false, true, false, false}},
		{"matchLabels empty value", metav1.LabelSelector{MatchLabels: map[string]string{"app": ""}}, []bool{false, false, false, false, false, true}},
		{"matchLabels two keys AND", metav1.LabelSelector{MatchLabels: map[string]string{"app": "web", "tier": "front"}}, []bool{false, false, false, true, false, false}},
		{"In", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{req("app", metav1.LabelSelectorOpIn, "web", "db")}}, []bool{false, true, true, true, false, false}},
		{"NotIn matches missing key", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{req("app", metav1.LabelSelectorOpNotIn, "web")}}, []bool{true, false, true, false, true, true}},
		{"Exists", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{req("tier", metav1.LabelSelectorOpExists)}}, []bool{false, false, false, true, true, false}},
		{"DoesNotExist", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{req("tier", metav1.LabelSelectorOpDoesNotExist)}}, []bool{true, true, true, false, false, true}},
		{"labels AND expressions", metav1.LabelSelector{
			MatchLabels:      map[string]string{"app": "web"},
			MatchExpressions: []metav1.LabelSelectorRequirement{req("tier", metav1.LabelSelectorOpDoesNotExist)},
		}, []bool{false, true, false, false, false, false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := compileSelector(&tc.sel)
			if err != nil {
				t.Fatal(err)
			}
			// The reference implementation must agree with ours on every label set.
			ref, err := metav1.LabelSelectorAsSelector(&tc.sel)
			if err != nil {
				t.Fatal(err)
			}
			for i, l := range set {
				if got := s.matches(l); got != tc.want[i] {
					t.Errorf("labels %v: got %v, want %v", l, got, tc.want[i])
				}
				if refGot := ref.Matches(labelSet(l)); refGot != tc.want[i] {
					t.Errorf("labels %v: apimachinery says %v, test expects %v", l, refGot, tc.want[i])
				}
			}
		})
	}
}

type labelSet map[string]string

func (l labelSet) Has(k string) bool              { _, ok := l[k]; return ok }
func (l labelSet) Get(k string) string            { return l[k] }
func (l labelSet) Lookup(k string) (string, bool) { v, ok := l[k]; return v, ok }

func TestSelectorInvalid(t *testing.T) {
	for i, sel := range []metav1.LabelSelector{
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Equals", Values: []string{"b"}}}},
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: metav1.LabelSelectorOpIn}}},
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: metav1.LabelSelectorOpExists, Values: []string{"b"}}}},
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "", Operator: metav1.LabelSelectorOpExists}}},
	} {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			if _, err := compileSelector(&sel); err == nil {
				t.Fatalf("selector %+v accepted", sel)
			}
		})
	}
}

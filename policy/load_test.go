package policy

import (
	"strings"
	"testing"
)

func TestLoaderFormats(t *testing.T) {
	l := &Loader{}
	files := map[string]string{
		"multi.yaml": "# comment only\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}\n---\n---\n" +
			"apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.1}\n",
		"array.json": `[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"b","namespace":"x"}},
			{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}]`,
		"list.yaml": "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n" +
			"  metadata: {name: p}\n  spec: {podSelector: {}}\n",
	}
	for _, name := range []string{"multi.yaml", "array.json", "list.yaml"} {
		if err := l.Add(name, []byte(files[name])); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if len(l.Input.Namespaces) != 1 || len(l.Input.Pods) != 2 || len(l.Input.Policies) != 1 {
		t.Fatalf("loaded %d namespaces, %d pods, %d policies", len(l.Input.Namespaces), len(l.Input.Pods), len(l.Input.Policies))
	}
	if l.Input.Policies[0].Namespace != "default" {
		t.Errorf("policy without namespace is in %q, want default", l.Input.Policies[0].Namespace)
	}
	if len(l.Skipped) != 1 || !strings.Contains(l.Skipped[0], "array.json: document 1: [1] (ConfigMap default/c): skipped") {
		t.Errorf("skipped: %q", l.Skipped)
	}
	if err := l.Add("wrong.yaml", []byte("apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: q}\n")); err == nil ||
		!strings.Contains(err.Error(), `unsupported apiVersion "networking.k8s.io/v1beta1"`) {
		t.Errorf("old apiVersion: %v", err)
	}
}

package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const backendDir = "../policy/testdata/backend-policy"

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, env{stdout: &out, stderr: &errb, stdin: strings.NewReader(""), getenv: func(string) string { return "" }})
	return code, out.String(), errb.String()
}

func TestPolicyMatrixJSONBackendPolicy(t *testing.T) {
	code, out, errOut := runCLI(t, "policy", "matrix", "--from", backendDir, "--ports", "8080,5432", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got []map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not a JSON list: %v\n%s", err, out)
	}
	// 3 pods → 6 ordered pairs × 2 ports × 1 protocol.
	if len(got) != 12 {
		t.Fatalf("%d results, want 12", len(got))
	}
	allowed := map[string]bool{}
	for _, r := range got {
		if len(r) != 5 {
			t.Fatalf("object %v: want exactly from, to, port, protocol, allowed", r)
		}
		key := r["from"].(string) + ">" + r["to"].(string) + ":" + r["protocol"].(string) + "/" + jsonNum(r["port"])
		allowed[key] = r["allowed"].(bool)
	}
	want := map[string]bool{
		// backend accepts only frontend on 8080, and may only reach database on 5432.
		"default/frontend>default/backend:TCP/8080": true,
		"default/database>default/backend:TCP/8080": false,
		"default/frontend>default/backend:TCP/5432": false,
		"default/backend>default/database:TCP/5432": true,
		"default/backend>default/database:TCP/8080": false,
		"default/backend>default/frontend:TCP/8080": false,
		"default/backend>default/frontend:TCP/5432": false,
		// Pods no policy selects talk freely.
		"default/frontend>default/database:TCP/5432": true,
		"default/database>default/frontend:TCP/8080": true,
	}
	for k, w := range want {
		if g, ok := allowed[k]; !ok || g != w {
			t.Errorf("%s: allowed=%v (present %v), want %v", k, g, ok, w)
		}
	}
}

func jsonNum(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestPolicyMatrixTable(t *testing.T) {
	code, out, errOut := runCLI(t, "policy", "matrix", "--from", "../policy/testdata/upstream-29", "--protocols", "TCP,udp", "--ports", "80")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"TCP/80  x/a  y/a  y/b\nx/a     -    .    X\ny/a     .    -    X\ny/b     .    X    -\n(3 allowed, 3 denied)\n",
		"UDP/80  x/a  y/a  y/b\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The Service in that directory is skipped, and said so.
	if !strings.Contains(errOut, "Service y/s-y-a): skipped") {
		t.Errorf("stderr: %q", errOut)
	}
}

func TestPolicyTrace(t *testing.T) {
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"--from", "default/frontend", "--to", "default/backend", "--port", "8080"}, []string{
			"ALLOWED default/frontend (10.244.0.10) → default/backend (10.244.0.11) TCP/8080",
			"egress: default/frontend not isolated; ingress: default/backend isolated by default/backend-policy; " +
				"rule default/backend-policy ingress[0] allows from pod default/frontend (10.244.0.10) on TCP/8080 → ALLOWED",
		}},
		{[]string{"--from", "default/database", "--to", "default/backend", "--port", "8080"}, []string{
			"DENIED", "no rule allows from pod default/database (10.244.0.12) on TCP/8080 → DENIED",
		}},
		{[]string{"--from", "default/backend", "--to", "default/frontend", "--port", "80"}, []string{
			"egress: default/backend isolated by default/backend-policy; no rule allows to pod default/frontend (10.244.0.10) on TCP/80",
		}},
		{[]string{"--from", "default/backend", "--to", "default/database", "--port", "5432", "--protocol", "udp"}, []string{
			"DENIED", "UDP/5432",
		}},
		{[]string{"--from", "192.0.2.7", "--to", "default/backend", "--port", "8080"}, []string{
			"egress: 192.0.2.7 is not an endpoint here, not isolated", "→ DENIED",
		}},
	}
	for _, tc := range cases {
		args := append([]string{"policy", "trace", "--from-dir", backendDir}, tc.args...)
		code, out, errOut := runCLI(t, args...)
		if code != 0 {
			t.Errorf("%v: exit %d: %s", tc.args, code, errOut)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
	code, out, _ := runCLI(t, "policy", "trace", "--from-dir", backendDir, "--from", "default/frontend", "--to", "default/backend", "--port", "8080", "-o", "json")
	var v struct {
		Allowed bool
		Ingress struct {
			AllowedBy []struct{ Policy, Direction string }
		}
	}
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || !v.Allowed ||
		len(v.Ingress.AllowedBy) != 1 || v.Ingress.AllowedBy[0].Policy != "default/backend-policy" {
		t.Errorf("trace -o json: exit %d, %v, %+v\n%s", code, err, v, out)
	}
}

// writeDir makes a manifest directory from file name → content.
func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const podA = `apiVersion: v1
kind: Pod
metadata: {namespace: x, name: a, labels: {pod: a}}
status: {podIP: 10.0.0.1}
`

func TestPolicyErrors(t *testing.T) {
	policyWith := func(spec string) string {
		return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: p}\nspec:\n" + spec
	}
	cases := []struct {
		name  string
		args  []string
		files map[string]string // a directory is made and passed with --from when set
		code  int
		want  []string
	}{
		{"no --from, bad kubeconfig", []string{"policy", "matrix", "--kubeconfig", "/nonexistent/kubeconfig"}, nil, 1, []string{"kubeconfig /nonexistent/kubeconfig"}},
		{"bad --ports", []string{"policy", "matrix", "--from", backendDir, "--ports", "80,0"}, nil, 2, []string{`--ports: "0"`}},
		{"bad --ports text", []string{"policy", "matrix", "--from", backendDir, "--ports", "http"}, nil, 2, []string{`--ports: "http"`}},
		{"bad --protocols", []string{"policy", "matrix", "--from", backendDir, "--protocols", "TCP,ICMP"}, nil, 2, []string{`unknown protocol "ICMP"`}},
		{"bad -o", []string{"policy", "matrix", "--from", backendDir, "-o", "xml"}, nil, 2, []string{"unknown output format"}},
		{"trace bad --from", []string{"policy", "trace", "--from-dir", backendDir, "--from", "frontend", "--to", "default/backend", "--port", "80"}, nil, 2, []string{"want namespace/pod"}},
		{"trace no port", []string{"policy", "trace", "--from-dir", backendDir, "--from", "default/frontend", "--to", "default/backend"}, nil, 2, []string{"--port 0"}},
		{"trace unknown pod", []string{"policy", "trace", "--from-dir", backendDir, "--from", "default/ghost", "--to", "default/backend", "--port", "80"}, nil, 1, []string{`no endpoint pod "default/ghost"`}},
		{"missing dir", []string{"policy", "matrix", "--from", "/nonexistent/dir"}, nil, 1, []string{"/nonexistent/dir"}},
		{"empty dir", []string{"policy", "matrix"}, map[string]string{"README": "x"}, 1, []string{"no *.yaml, *.yml or *.json file"}},
		{"unparseable YAML", []string{"policy", "matrix"}, map[string]string{"pods.yaml": podA + "---\nkind: Pod\n  metadata: [\n"}, 1,
			[]string{"pods.yaml: document 2"}},
		{"YAML boolean", []string{"policy", "matrix"}, map[string]string{"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n"}, 1,
			[]string{"ns.yaml: document 1", "quote it"}},
		{"unknown protocol", []string{"policy", "matrix"}, map[string]string{"p.yaml": policyWith("  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP, port: 80}]}]\n")}, 1,
			[]string{"p.yaml: document 1 (NetworkPolicy x/p): spec.ingress[0].ports[0]: protocol: unknown protocol \"ICMP\""}},
		{"bad port", []string{"policy", "matrix"}, map[string]string{"p.yaml": policyWith("  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]\n")}, 1,
			[]string{"spec.ingress[0].ports[0]: port: 70000 is not in 1-65535"}},
		{"bad endPort", []string{"policy", "matrix"}, map[string]string{"p.yaml": policyWith("  podSelector: {}\n  egress: [{ports: [{port: 90, endPort: 80}]}]\n")}, 1,
			[]string{"spec.egress[0].ports[0]: endPort: 80 must be between port (90) and 65535"}},
		{"bad cidr", []string{"policy", "matrix"}, map[string]string{"p.yaml": policyWith("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/24]}}]}]\n")}, 1,
			[]string{"spec.egress[0].to[0]: ipBlock: except[0]: 11.0.0.0/24 is not inside cidr 10.0.0.0/8"}},
		{"misspelt field", []string{"policy", "matrix"}, map[string]string{"p.yaml": policyWith("  podSelector: {}\n  egres: []\n")}, 1,
			[]string{`unknown field "egres"`}},
		{"bad pod IP", []string{"policy", "matrix"}, map[string]string{"pod.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: 10.0.0.300}\n"}, 1,
			[]string{"pod.yaml: document 1 (Pod default/a): status.podIP"}},
		{"bad container port protocol", []string{"policy", "matrix"}, map[string]string{"pod.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protocol: tcp}]}]}\n"}, 1,
			[]string{"spec.containers[0].ports[0].protocol"}},
		{"duplicate", []string{"policy", "matrix"}, map[string]string{"a.yaml": podA, "b.yaml": podA}, 1,
			[]string{"b.yaml: document 1 (Pod x/a): defined twice (also in", "a.yaml"}},
		{"no kind", []string{"policy", "matrix"}, map[string]string{"a.yaml": "metadata: {name: a}\n"}, 1, []string{"a.yaml: document 1: no kind"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.files != nil {
				args = append(args, "--from", writeDir(t, tc.files))
			}
			code, out, errOut := runCLI(t, args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stdout %q stderr %q", code, tc.code, out, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q: %q", w, errOut)
				}
			}
		})
	}
}

func TestPolicyMatrixPodWithoutIP(t *testing.T) {
	dir := writeDir(t, map[string]string{"pods.yaml": podA + "---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: x, name: b}\n---\n" +
		"apiVersion: v1\nkind: Pod\nmetadata: {namespace: \"y\", name: c}\nstatus: {podIPs: [{ip: 10.0.1.3}]}\n"})
	code, out, errOut := runCLI(t, "policy", "matrix", "--from", dir, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "pod x/b has no IP") {
		t.Errorf("stderr: %q", errOut)
	}
	var got []probeResult
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 4 { // 2 pods, 2 pairs, 2 ports
		t.Errorf("results %v, %v", got, err)
	}
}

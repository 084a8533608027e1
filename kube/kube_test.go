package kube

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRESTConfigErrors(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := RESTConfig(""); err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("outside a pod without kubeconfig: want an error pointing at --kubeconfig, got %v", err)
	}
	if _, err := RESTConfig("/nonexistent/kubeconfig"); err == nil || !strings.Contains(err.Error(), "/nonexistent/kubeconfig") {
		t.Errorf("missing file: want error naming it, got %v", err)
	}
	p := filepath.Join(t.TempDir(), "kc")
	kc := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := RESTConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://127.0.0.1:6443" || cfg.UserAgent != UserAgent || cfg.QPS != 20 {
		t.Errorf("config %+v", cfg)
	}
}

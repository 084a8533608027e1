// Package testbin gives tests the patronus binary: $PATRONUS_BIN when set (CI builds it
// once with `make build`), otherwise one built from this module once per test process.
// Only tests import it.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	once  sync.Once
	built string
	err   error
)

// Patronus returns the path of the patronus binary, building it if needed.
func Patronus(t testing.TB) string {
	t.Helper()
	if b := os.Getenv("PATRONUS_BIN"); b != "" {
		return b
	}
	once.Do(func() { built, err = build() })
	if err != nil {
		t.Fatalf("building patronus (set PATRONUS_BIN to skip): %v", err)
	}
	return built
}

func build() (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	dir, err := os.MkdirTemp("", "pt-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "patronus")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
}

// Cleanup removes a binary Patronus built; call it from TestMain after m.Run.
func Cleanup() {
	if built != "" {
		os.RemoveAll(filepath.Dir(built))
	}
}

// Lab returns a binary the lab builds (scripts/lab/build.sh NAME: CoreDNS, kube-proxy,
// ...): $env when set, else the script's cached build (built first if missing; minutes the
// first time, so CI builds them up front and sets the variables).
func Lab(t testing.TB, name, env string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", env, p, err)
		}
		return p
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd := exec.Command(filepath.Join(root, "scripts/lab/build.sh"), name)
	cmd.Dir = root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/lab/build.sh %s (or set %s): %v\n%s", name, env, err, stderr.String())
	}
	return filepath.Join(strings.TrimSpace(string(out)), name)
}

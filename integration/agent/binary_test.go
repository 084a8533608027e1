package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/patronus/patronus/internal/testbin"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/store"
)

// patronusBin is $PATRONUS_BIN or a binary built from the module once per test run.
func patronusBin(t *testing.T) string { return testbin.Patronus(t) }

// safeBuffer collects a child's output while it runs.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The agent as users run it: the built binary, flags and environment, SIGTERM to stop.
func TestBinaryAgent(t *testing.T) {
	bin := patronusBin(t)
	c := k8senv.Start(t)
	dir := nodeDir(t)
	db, sock := filepath.Join(dir, "k8s-sdwan.db"), filepath.Join(dir, "agent.sock")

	cmd := exec.Command(bin, "agent", "--kubeconfig", c.Kubeconfig(), "--database", db, "--socket", sock,
		"--metrics-addr", "127.0.0.1:0", "--cni-conflist", filepath.Join(dir, "none.conflist"), "--db-poll", "200ms", "--log-format", "text",
		// Enforcement would load BPF and nftables in this (the root) namespace.
		"--enforce-policy=false", "--mesh=false", "--paths=false")
	cmd.Env = append(os.Environ(), "NODE_NAME="+node, "CLUSTER_ID=bin-cluster")
	var out safeBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("agent output:\n%s", out.String())
		}
	})

	client := localapi.NewClient(sock)
	waitFor(t, 60*time.Second, "binary agent ready", func() error {
		select {
		case err := <-exited:
			exited <- err
			return errPermanent{fmt.Errorf("agent exited: %v", err)}
		default:
		}
		return client.Ready(context.Background())
	})

	p := createPod(t, c.Client(), "default", "web", map[string]string{"app": "web"}, nil)
	registerPod(t, db, store.Pod{ContainerID: "ctr-bin", Namespace: "default", Name: "web", UID: string(p.UID),
		IPs: []netip.Prefix{netip.MustParsePrefix("10.244.1.50/16")}})
	waitPod(t, client, "default", "web", nil)
	s, err := client.Status(context.Background())
	if err != nil || s.ClusterID != "bin-cluster" || s.Node != node || s.Database != db {
		t.Fatalf("status from the env/flags: %+v, %v", s, err)
	}

	// `patronus pods`: the pod as Kubernetes sees it.
	po, err := exec.Command(bin, "pods", "--socket", sock).CombinedOutput()
	if err != nil {
		t.Fatalf("patronus pods: %v\n%s", err, po)
	}
	for _, want := range []string{"default", "web", "10.244.1.50/16", "best-effort", "app=web", "true"} {
		if !strings.Contains(string(po), want) {
			t.Errorf("patronus pods lacks %q:\n%s", want, po)
		}
	}

	// `patronus status` against the running agent.
	// (Its exit code is 1 here: no plugin is installed in the empty --cni-bin-dir.)
	st := exec.Command(bin, "status", "--socket", sock, "--cni-bin-dir", dir)
	stOut, _ := st.CombinedOutput()
	for _, want := range []string{"✓ SD-WAN database: " + db, "✓ Active tunnels: 0", "✓ Pods managed: 1", "✓ NetworkPolicies: 0",
		"✓ Agent: ready, node " + node + " in cluster bin-cluster"} {
		if !strings.Contains(string(stOut), want) {
			t.Errorf("patronus status output lacks %q:\n%s", want, stOut)
		}
	}

	// SIGTERM: clean exit, socket removed.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("agent exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not exit within 20s of SIGTERM")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if !strings.Contains(out.String(), "agent stopped") {
		t.Errorf("no shutdown log line:\n%s", out.String())
	}

	// `patronus status` with the agent gone reads the database.
	st = exec.Command(bin, "status", "--socket", sock, "--database", db, "--cni-bin-dir", dir)
	stOut, _ = st.CombinedOutput()
	for _, want := range []string{"✓ Pods managed: 1", "✓ NetworkPolicies: 0 (last seen by the agent at", "✗ Agent: not running"} {
		if !strings.Contains(string(stOut), want) {
			t.Errorf("patronus status without the agent lacks %q:\n%s", want, stOut)
		}
	}
}

// Usage and configuration errors of the command: exit codes and messages.
func TestBinaryAgentErrors(t *testing.T) {
	bin := patronusBin(t)
	dir := nodeDir(t)
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		code int
		want string
	}{
		{"unknown flag", []string{"agent", "--no-such-flag"}, nil, 2, "unknown flag"},
		{"no node name", []string{"agent", "--kubeconfig", filepath.Join(dir, "kc")}, []string{"NODE_NAME="}, 1, "NODE_NAME"},
		{"missing kubeconfig", []string{"agent", "--kubeconfig", filepath.Join(dir, "kc"), "--node-name", "n"}, nil, 1, filepath.Join(dir, "kc")},
		{"bad log level", []string{"agent", "--log-level", "loud"}, nil, 2, "--log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			cmd.Env = append(os.Environ(), tc.env...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tc.code {
				t.Fatalf("want exit %d, got %v\n%s", tc.code, err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, out)
			}
		})
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

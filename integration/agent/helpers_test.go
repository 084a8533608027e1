// Package agent_test runs `patronus agent` against a real etcd + kube-apiserver
// (integration/k8senv) and checks what it shows on its local API.
package agent_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/agent"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/store"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const node = "node-a"

// testLogger writes the agent's logs to the test log (shown on failure or with -v).
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// nodeDir is a short directory for the socket (unix socket paths are limited to 108
// bytes; t.TempDir() includes the test name) and the database.
func nodeDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "pt-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// runningAgent is an agent.Run in a goroutine.
type runningAgent struct {
	cancel context.CancelFunc
	done   chan error
	client *localapi.Client
	opts   agent.Options
}

func baseOptions(t *testing.T, c *k8senv.Cluster, dir string) agent.Options {
	return agent.Options{
		RESTConfig:        c.RESTConfig(),
		NodeName:          node,
		ClusterID:         "test-cluster",
		DatabasePath:      filepath.Join(dir, "k8s-sdwan.db"),
		SocketPath:        filepath.Join(dir, "agent.sock"),
		ConflistPath:      filepath.Join(dir, "10-patronus.conflist"),
		MetricsAddr:       "127.0.0.1:0",
		StorePollInterval: 100 * time.Millisecond,
		MCSRetryInterval:  500 * time.Millisecond,
		Logger:            testLogger(t),
		Registry:          prometheus.NewRegistry(),
	}
}

func startAgent(t *testing.T, opts agent.Options) *runningAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{cancel: cancel, done: make(chan error, 1), client: localapi.NewClient(opts.SocketPath), opts: opts}
	go func() { ra.done <- agent.Run(ctx, opts) }()
	t.Cleanup(func() { ra.stop(t) })
	waitFor(t, 60*time.Second, "agent ready", func() error {
		select {
		case err := <-ra.done:
			ra.done <- err
			return fmt.Errorf("agent exited: %w", errPermanent{err})
		default:
		}
		return ra.client.Ready(context.Background())
	})
	return ra
}

// stop cancels the agent and waits for Run to return (idempotent).
func (ra *runningAgent) stop(t *testing.T) error {
	t.Helper()
	ra.cancel()
	select {
	case err := <-ra.done:
		ra.done <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not stop within 30s of cancellation")
		return nil
	}
}

type errPermanent struct{ error }

// waitFor polls check until it returns nil; errPermanent stops at once.
func waitFor(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		var p errPermanent
		if errors.As(err, &p) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("waiting for %s: %v", what, err)
}

func createPod(t *testing.T, k kubernetes.Interface, ns, name string, labels, annotations map[string]string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			NodeName:   node, // no scheduler here: bind the pod to our node directly
			Containers: []corev1.Container{{Name: "c", Image: "busybox"}},
		},
	}
	got, err := k.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	return got
}

// registerPod writes the row CNI ADD writes (namespace/name/UID from CNI_ARGS).
func registerPod(t *testing.T, dbPath string, p store.Pod) {
	t.Helper()
	db, err := store.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if p.IfName == "" {
		p.IfName = "eth0"
	}
	if err := db.PutPod(context.Background(), p); err != nil {
		t.Fatal(err)
	}
}

func unregisterPod(t *testing.T, dbPath, containerID string) {
	t.Helper()
	db, err := store.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.DeletePod(context.Background(), containerID, "eth0"); err != nil {
		t.Fatal(err)
	}
}

func findPod(pods []localapi.Pod, ns, name string) *localapi.Pod {
	for i := range pods {
		if pods[i].Namespace == ns && pods[i].Name == name {
			return &pods[i]
		}
	}
	return nil
}

// waitPod waits until /v1/pods shows ns/name matched with its API object and cond holds.
func waitPod(t *testing.T, c *localapi.Client, ns, name string, cond func(p *localapi.Pod) error) localapi.Pod {
	t.Helper()
	return waitPodWithin(t, 30*time.Second, c, ns, name, cond)
}

func waitPodWithin(t *testing.T, d time.Duration, c *localapi.Client, ns, name string, cond func(p *localapi.Pod) error) localapi.Pod {
	t.Helper()
	var got localapi.Pod
	waitFor(t, d, "pod "+ns+"/"+name+" on /v1/pods", func() error {
		pods, err := c.Pods(context.Background())
		if err != nil {
			return err
		}
		p := findPod(pods, ns, name)
		if p == nil {
			return fmt.Errorf("not listed (have %d pods)", len(pods))
		}
		if !p.Synced {
			return fmt.Errorf("listed but not matched with its API object yet: %+v", *p)
		}
		if cond != nil {
			if err := cond(p); err != nil {
				return err
			}
		}
		got = *p
		return nil
	})
	return got
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

package rbac

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/patronus/patronus/agent"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
)

// The agent runs on the patronus ServiceAccount's token from the installed manifests (no
// admin credential): its caches sync (every informer may list and watch), it reads the
// ConfigMap's cluster id, emits an Event for an invalid QoS annotation, and watches the
// MCS API, and nothing it logs says "forbidden".
func TestAgentRunsWithServiceAccountToken(t *testing.T) {
	c := k8senv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	saCfg, _, err := c.InstallPatronus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	admin := c.Client()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "voip", Namespace: "default",
			Annotations: map[string]string{"patronus.io/qos-class": "gold"}},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	if _, err := admin.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "pt-rbac-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	logs := &lockedBuffer{}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(runCtx, agent.Options{
			RESTConfig:       saCfg,
			NodeName:         "node-a",
			ConfigNamespace:  k8senv.PatronusNamespace,
			ConflistPath:     filepath.Join(dir, "10-patronus.conflist"),
			DatabasePath:     filepath.Join(dir, "k8s-sdwan.db"),
			SocketPath:       filepath.Join(dir, "agent.sock"),
			MetricsAddr:      "127.0.0.1:0",
			MCSRetryInterval: 500 * time.Millisecond,
			Logger:           slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Registry:         prometheus.NewRegistry(),
		})
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("agent did not stop within 30s")
		}
		if t.Failed() {
			t.Logf("agent logs:\n%s", logs.String())
		}
	})
	client := localapi.NewClient(filepath.Join(dir, "agent.sock"))

	var st localapi.Status
	waitFor(t, done, 60*time.Second, "agent ready with MCS watched", func() error {
		if st, err = client.Status(ctx); err != nil {
			return err
		}
		if !st.Ready || !st.MCS.Available {
			return fmt.Errorf("ready=%v (%s) mcs=%+v", st.Ready, st.NotReadyReason, st.MCS)
		}
		return nil
	})
	if st.ClusterID != "prod-us-west" {
		t.Errorf("cluster id %q: want the ConfigMap's prod-us-west (read with the ServiceAccount)", st.ClusterID)
	}

	waitFor(t, done, 30*time.Second, "Event for the invalid QoS annotation", func() error {
		evs, err := admin.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=voip"})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Reason == agent.ReasonInvalidQoSAnnotation {
				return nil
			}
		}
		return fmt.Errorf("%d events, none %s", len(evs.Items), agent.ReasonInvalidQoSAnnotation)
	})

	mc, err := mcsclient.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "frontend"}}
	if _, err := mc.MulticlusterV1beta1().ServiceExports("default").Create(ctx, se, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, done, 30*time.Second, "ServiceExport seen", func() error {
		if st, err = client.Status(ctx); err != nil {
			return err
		}
		if st.MCS.ServiceExports != 1 {
			return fmt.Errorf("mcs %+v", st.MCS)
		}
		return nil
	})

	if l := strings.ToLower(logs.String()); strings.Contains(l, "forbidden") {
		t.Errorf("the agent was refused something with the ServiceAccount token (see its logs)")
	}
}

// waitFor polls check until it succeeds; it fails at once if the agent exits.
func waitFor(t *testing.T, done chan error, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case e := <-done:
			done <- e
			t.Fatalf("agent exited while waiting for %s: %v", what, e)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

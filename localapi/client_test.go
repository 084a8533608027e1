package localapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"testing"
)

func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return path
}

func TestClient(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready: waiting for caches", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"node":"n1","clusterID":"c1","podsManaged":1,"networkPolicies":3,"tunnels":[],"pods":[{"namespace":"default","name":"web","ips":["10.244.1.10/16"],"qos":{"class":"bulk"}}]}`))
	})
	mux.HandleFunc("GET /v1/pods", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"items":[{"namespace":"default","name":"web","labels":{"app":"web"},"synced":true}]}`))
	})
	c := NewClient(serveUnix(t, mux))
	defer c.Close()
	ctx := context.Background()

	if err := c.Healthz(ctx); err != nil {
		t.Fatal(err)
	}
	err := c.Ready(ctx)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 503 {
		t.Fatalf("Ready: want a 503 StatusError, got %v", err)
	}
	s, err := c.Status(ctx)
	if err != nil || s.Node != "n1" || s.NetworkPolicies != 3 || len(s.Pods) != 1 || s.Pods[0].QoS.Class != "bulk" {
		t.Fatalf("Status: %+v, %v", s, err)
	}
	pods, err := c.Pods(ctx)
	if err != nil || len(pods) != 1 || pods[0].Labels["app"] != "web" || !pods[0].Synced {
		t.Fatalf("Pods: %+v, %v", pods, err)
	}
}

func TestClientNotRunning(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "absent.sock"))
	if err := c.Ready(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("want ErrNotRunning, got %v", err)
	}
	if got := NewClient("").Socket(); got != DefaultSocket {
		t.Errorf("default socket %q", got)
	}
}

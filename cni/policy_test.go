package cni_test

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/patronus/patronus/localapi"
)

// policyAgent is a fake agent that takes delay to "enforce" and records the requests.
type policyAgent struct {
	mu      sync.Mutex
	syncs   []localapi.EndpointRequest
	removes []localapi.EndpointRequest
}

func newPolicyAgent(t *testing.T, delay time.Duration, code int) (string, *policyAgent) {
	t.Helper()
	pa := &policyAgent{}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req localapi.EndpointRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		pa.mu.Lock()
		switch r.URL.Path {
		case localapi.PathEndpointSync:
			pa.syncs = append(pa.syncs, req)
		case localapi.PathEndpointRemove:
			pa.removes = append(pa.removes, req)
		}
		pa.mu.Unlock()
		if r.URL.Path == localapi.PathEndpointSync {
			time.Sleep(delay)
			if code != http.StatusOK {
				http.Error(w, "cannot enforce", code)
				return
			}
			_ = json.NewEncoder(w).Encode(localapi.EndpointSyncResult{Enforced: true, IngressIsolated: true})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock, pa
}

// TestAddWaitsForPolicy: with enforcement on, ADD returns only after the agent answered
// the pod's policy sync (naming the pod, its addresses and host veth), DEL tells the
// agent, and an absent or failing agent fails ADD with code 11 and leaves nothing behind.
func TestAddWaitsForPolicy(t *testing.T) {
	h := newHarness(t)
	const delay = 400 * time.Millisecond
	sock, agent := newPolicyAgent(t, delay, http.StatusOK)
	conf := h.plugin()
	conf["sdwan"].(map[string]any)["enable_policy_enforcement"] = true
	conf["sdwan"].(map[string]any)["agent_socket"] = sock
	l := h.list("1.1.0", conf)

	p := h.newPod("waits")
	start := time.Now()
	r, err := h.add(l, p)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < delay {
		t.Fatalf("ADD returned after %s, before the agent's policy sync (%s)", took, delay)
	}
	ip := podIP(t, r, p)
	agent.mu.Lock()
	syncs := slices.Clone(agent.syncs)
	agent.mu.Unlock()
	if len(syncs) != 1 {
		t.Fatalf("want 1 sync request, got %+v", syncs)
	}
	s := syncs[0]
	veths := h.hostVeths()
	if s.Namespace != "default" || s.Name != "waits" || s.UID != "uid-waits" || s.IfName != "eth0" ||
		!slices.Contains(veths, s.HostVeth) || len(s.IPs) != 1 || s.IPs[0] != ip.String()+"/16" {
		t.Fatalf("sync request %+v (host veths %v, pod IP %s)", s, veths, ip)
	}
	if err := h.del(l, p); err != nil {
		t.Fatal(err)
	}
	agent.mu.Lock()
	removes := slices.Clone(agent.removes)
	agent.mu.Unlock()
	if len(removes) != 1 || removes[0].Name != "waits" || removes[0].HostVeth != s.HostVeth {
		t.Fatalf("remove requests %+v", removes)
	}
	h.assertClean()

	failing, _ := newPolicyAgent(t, 0, http.StatusServiceUnavailable)
	for name, socket := range map[string]string{"agent absent": filepath.Join(h.dir, "absent.sock"), "agent fails": failing} {
		t.Run(name, func(t *testing.T) {
			conf["sdwan"].(map[string]any)["agent_socket"] = socket
			l := h.list("1.1.0", conf)
			p := h.newPod("refused")
			_, err := h.add(l, p)
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater {
				t.Fatalf("ADD: want CNI error 11, got %v", err)
			}
			t.Logf("ADD error: %v", err)
			_ = h.del(l, p)
			h.assertClean()
		})
	}
}

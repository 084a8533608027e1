package cli

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/store"
)

// fakeAgent serves /v1/status on a unix socket.
func fakeAgent(t *testing.T, s localapi.Status) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pt-cli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) { json.NewEncoder(w).Encode(s) })
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func dbWithPods(t *testing.T, n int, snap *localapi.Snapshot) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "k8s-sdwan.db")
	db, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i := range n {
		if err := db.PutPod(context.Background(), store.Pod{ContainerID: string(rune('a' + i)), IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	if snap != nil {
		b, _ := json.Marshal(snap)
		if err := db.Set(context.Background(), localapi.SnapshotKey, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func TestStatusWithRunningAgent(t *testing.T) {
	db := dbWithPods(t, 2, nil)
	sock := fakeAgent(t, localapi.Status{Node: "n1", ClusterID: "aws", Ready: true, Database: db, NetworkPolicies: 12,
		Bridge:  localapi.Bridge{Name: "pt-nobr0"},
		Tunnels: []localapi.Tunnel{{Cluster: "gcp-us-central1", Up: true}, {Cluster: "onprem-dc1", Up: true}}})
	// No --database: the agent's database is used.
	_, out, _ := runCmd("status", "--socket", sock, "--cni-bin-dir", t.TempDir())
	want := []string{
		"✓ SD-WAN database: " + db,
		"✓ Active tunnels: 2 (gcp-us-central1, onprem-dc1)",
		"✓ Pods managed: 2",
		"✓ NetworkPolicies: 12",
		"✓ Agent: ready, node n1 in cluster aws (" + sock + ")",
	}
	assertInOrder(t, out, want)
	if !strings.Contains(out, "Bridge interface: pt-nobr0") {
		t.Errorf("the agent's bridge name is not used:\n%s", out)
	}

	_, js, _ := runCmd("status", "--socket", sock, "-o", "json")
	var s Status
	if err := json.Unmarshal([]byte(js), &s); err != nil || s.Agent == nil || !s.Agent.Running || s.Agent.Live.NetworkPolicies != 12 {
		t.Fatalf("json: %v\n%s", err, js)
	}
}

func TestStatusTunnelDown(t *testing.T) {
	db := dbWithPods(t, 0, nil)
	sock := fakeAgent(t, localapi.Status{Node: "n1", ClusterID: "aws", Ready: false, NotReadyReason: "waiting for the Kubernetes caches to sync",
		Database: db, Tunnels: []localapi.Tunnel{{Cluster: "a", Up: true}, {Cluster: "b"}}})
	code, out, _ := runCmd("status", "--socket", sock, "--cni-bin-dir", t.TempDir())
	assertInOrder(t, out, []string{"✗ Active tunnels: 1 (a); down: b", "✗ Agent: running but not ready: waiting for the Kubernetes caches to sync"})
	if code != ExitError {
		t.Errorf("exit %d, want 1", code)
	}
}

func TestStatusAgentNotRunning(t *testing.T) {
	dir := t.TempDir()
	absent := filepath.Join(dir, "absent.sock")

	// A database the agent never wrote to: only the plugin's lines.
	db := dbWithPods(t, 1, nil)
	_, out, _ := runCmd("status", "--socket", absent, "--database", db, "--cni-bin-dir", dir)
	if strings.Contains(out, "Agent:") || strings.Contains(out, "NetworkPolicies:") || strings.Contains(out, "Active tunnels") {
		t.Errorf("no agent ever ran, yet agent lines are shown:\n%s", out)
	}

	// The agent left a snapshot: show it, marked as such, and flag the agent as down.
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	db = dbWithPods(t, 3, &localapi.Snapshot{Node: "n1", ClusterID: "aws", NetworkPolicies: 7, Tunnels: []localapi.Tunnel{}, UpdatedAt: at})
	code, out, _ := runCmd("status", "--socket", absent, "--database", db, "--cni-bin-dir", dir)
	assertInOrder(t, out, []string{
		"✓ SD-WAN database: " + db,
		"✓ Active tunnels: 0 (last seen by the agent at " + at.Local().Format(time.RFC3339) + ")",
		"✓ Pods managed: 3",
		"✓ NetworkPolicies: 7 (last seen by the agent at",
		"✗ Agent: not running (no answer on " + absent + ")",
	})
	if code != ExitError {
		t.Errorf("exit %d, want 1", code)
	}
}

func assertInOrder(t *testing.T, out string, want []string) {
	t.Helper()
	rest := out
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("output lacks %q (or it is out of order):\n%s", w, out)
		}
		rest = rest[i+len(w):]
	}
}

package cli

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/patronus/patronus/mesh"
)

// fakeMeshAgent serves the mesh part of the local API on a unix socket.
func fakeMeshAgent(t *testing.T) (socket string, events func() []mesh.EventRequest) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []mesh.EventRequest
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode([]mesh.Member{
			{Name: "a", Addr: "10.0.0.1:7946", Status: "alive", Cluster: "east", Tags: map[string]string{"cluster": "east", "role": "gateway", "cert": "LONG", "pods": "10.244.1.0/24"}},
			{Name: "b", Addr: "10.0.0.2:7946", Status: "failed", Cluster: "east", Tags: map[string]string{"cluster": "east", "role": "gateway"}},
			{Name: "w", Addr: "10.1.0.1:7946", Status: "alive", Cluster: "west", Tags: map[string]string{"cluster": "west", "role": "edge"}},
		})
	})
	mux.HandleFunc("POST /v1/events", func(w http.ResponseWriter, r *http.Request) {
		var req mesh.EventRequest
		json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte(`{}`))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return socket, func() []mesh.EventRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]mesh.EventRequest(nil), got...)
	}
}

func TestMembers(t *testing.T) {
	socket, _ := fakeMeshAgent(t)
	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		want  []string
		avoid []string
	}{
		{"table", nil, 0, []string{"NAME", "a     10.0.0.1:7946", "alive", "cluster=east,pods=10.244.1.0/24,role=gateway", "failed", "w "}, []string{"LONG"}},
		{"status", []string{"--status", "failed"}, 0, []string{"b "}, []string{"a ", "w "}},
		{"cluster", []string{"--cluster", "west"}, 0, []string{"w "}, []string{"a ", "b "}},
		{"tag regexp anchored", []string{"--tag", "role=gate.*"}, 0, []string{"a ", "b "}, []string{"w "}},
		{"tag regexp no partial match", []string{"--tag", "role=gate"}, 0, []string{"NAME"}, []string{"a ", "b ", "w "}},
		{"json keeps cert", []string{"--status", "alive", "-o", "json"}, 0, []string{`"name": "a"`, `"cert": "LONG"`, `"name": "w"`}, []string{`"name": "b"`}},
		{"bad status", []string{"--status", "dead"}, 2, nil, nil},
		{"bad tag", []string{"--tag", "role"}, 2, nil, nil},
		{"bad output", []string{"-o", "xml"}, 2, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, append([]string{"members", "--socket", socket}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, a := range tc.avoid {
				if strings.Contains(out, a) {
					t.Errorf("output has %q:\n%s", a, out)
				}
			}
		})
	}
}

func TestMembersNoAgent(t *testing.T) {
	code, _, errOut := runCLI(t, "members", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if code != 1 || !strings.Contains(errOut, "agent is not running") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestEvent(t *testing.T) {
	socket, events := fakeMeshAgent(t)
	code, out, errOut := runCLI(t, "event", "--socket", socket, "deploy", "v1.2")
	if code != 0 || !strings.Contains(out, "Event 'deploy' dispatched") {
		t.Fatalf("exit %d: %s %s", code, out, errOut)
	}
	code, _, _ = runCLI(t, "event", "--socket", socket, "--coalesce=false", "ping")
	if code != 0 {
		t.Fatal("event without payload failed")
	}
	got := events()
	if len(got) != 2 || got[0].Name != "deploy" || string(got[0].Payload) != "v1.2" || !got[0].Coalesce || got[1].Coalesce || got[1].Payload != nil {
		t.Fatalf("agent received %+v", got)
	}
	if code, _, _ := runCLI(t, "event", "--socket", socket); code != 2 {
		t.Fatalf("no name: exit %d, want 2", code)
	}
}

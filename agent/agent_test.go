package agent

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

func TestListenUnix(t *testing.T) {
	dir, err := os.MkdirTemp("", "pt-sock-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "run", "agent.sock")

	ln, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	di, _ := os.Stat(filepath.Dir(path))
	if fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
		t.Errorf("socket mode %v, dir mode %v; want 0600 and 0700", fi.Mode().Perm(), di.Mode().Perm())
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A live socket belongs to another agent.
	if _, err := listenUnix(path); err == nil || !strings.Contains(err.Error(), "another agent") {
		t.Fatalf("second listener: want 'another agent' error, got %v", err)
	}
	ln.Close()

	// A stale socket (agent killed: the file stays, nobody listens) is replaced.
	l2, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l2.SetUnlinkOnClose(false)
	l2.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("setup: stale socket missing: %v", err)
	}
	ln, err = listenUnix(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()

	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := listenUnix(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: want error, got %v", err)
	}
}

func TestEventDedup(t *testing.T) {
	var d eventDedup
	steps := []struct {
		ns, name, uid, msgs string
		want                bool
	}{
		{"default", "p", "u1", "", false},    // no errors: nothing to report
		{"default", "p", "u1", "bad", true},  // first error
		{"default", "p", "u1", "bad", false}, // resync: same errors, no new Event
		{"default", "p", "u1", "bad2", true}, // annotation changed to another bad value
		{"default", "p", "u2", "bad2", true}, // pod recreated with the same name
		{"default", "p", "u2", "", false},    // fixed
		{"default", "p", "u2", "bad2", true}, // broken again
		{"other", "p", "u3", "bad2", true},   // another pod
	}
	for i, s := range steps {
		if got := d.changed(s.ns, s.name, typesUID(s.uid), s.msgs); got != s.want {
			t.Errorf("step %d %+v: changed=%v", i, s, got)
		}
	}
	d.forget("default", "p")
	if !d.changed("default", "p", "u2", "bad2") {
		t.Error("after forget, errors must be reported again")
	}
}

func TestRunValidatesOptions(t *testing.T) {
	if err := Run(context.Background(), Options{}); err == nil || !strings.Contains(err.Error(), "NODE_NAME") {
		t.Errorf("no node name: %v", err)
	}
	if err := Run(context.Background(), Options{NodeName: "n", MetricsAddr: "9476"}); err == nil || !strings.Contains(err.Error(), "--metrics-addr") {
		t.Errorf("bad metrics addr: %v", err)
	}
}

func typesUID(s string) types.UID { return types.UID(s) }

func TestAPIMuxExtraHandlers(t *testing.T) {
	a := &agent{opts: Options{APIHandlers: []Handler{
		{Pattern: "GET /v1/members", Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("members")) })},
	}}.withDefaults(), seen: newSeenSets()}
	a.notReady.Store("starting")
	mux, err := a.apiMux()
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{"/v1/members": 200, "/healthz": 200, "/readyz": 503, "/nope": 404} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != want {
			t.Errorf("GET %s: %d, want %d", path, rec.Code, want)
		}
	}
	a.ready.Store(true)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 200 {
		t.Errorf("readyz after ready: %d", rec.Code)
	}

	// A conflicting pattern is an error, not a panic.
	a.opts.APIHandlers = append(a.opts.APIHandlers, Handler{Pattern: "GET /v1/status", Handler: http.NotFoundHandler()})
	if _, err := a.apiMux(); err == nil {
		t.Error("conflicting handler accepted")
	}
}

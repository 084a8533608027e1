package cli

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/store"
)

func TestPodsFromAgent(t *testing.T) {
	dir, err := os.MkdirTemp("", "pt-cli-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pods", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(localapi.PodList{Items: []localapi.Pod{{Namespace: "default", Name: "voip", ContainerID: "0123456789abcdef",
			IPs: []string{"10.244.1.10/16"}, Labels: map[string]string{"tier": "rt", "app": "voip"}, Synced: true,
			QoS: localapi.QoS{Class: "latency-sensitive", MaxLatencyMs: 20, MinBandwidthMbps: 10}}}})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()

	code, out, _ := runCmd("pods", "--socket", sock)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"NAMESPACE", "default", "voip", "10.244.1.10/16", "latency-sensitive,<=20ms,>=10Mbps", "app=voip,tier=rt", "true", "0123456789ab\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	_, js, _ := runCmd("pods", "--socket", sock, "-o", "json")
	var pods []localapi.Pod
	if err := json.Unmarshal([]byte(js), &pods); err != nil || len(pods) != 1 || pods[0].QoS.MaxLatencyMs != 20 {
		t.Fatalf("json: %v\n%s", err, js)
	}
}

func TestPodsFromDatabase(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k8s-sdwan.db")
	db, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	db.PutPod(context.Background(), store.Pod{ContainerID: "c1", IfName: "eth0", Namespace: "default", Name: "web",
		IPs: []netip.Prefix{netip.MustParsePrefix("10.244.1.11/16")}, Annotations: map[string]string{"patronus.io/qos-class": "gold"}})
	db.Close()
	code, out, errOut := runCmd("pods", "--socket", filepath.Join(dir, "none.sock"), "--database", path)
	if code != 0 || !strings.Contains(errOut, "agent not running") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"web", "10.244.1.11/16", "best-effort (invalid annotation)", "false"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if code, _, _ := runCmd("pods", "--socket", filepath.Join(dir, "none.sock"), "--database", filepath.Join(dir, "absent.db")); code != ExitError {
		t.Errorf("absent database: exit %d, want 1", code)
	}
}

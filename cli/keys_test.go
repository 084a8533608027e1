package cli

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/nodenet"
)

func TestKeysRotateAndShow(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	rotated := 0
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+tunnel.PathKeysRotate, func(w http.ResponseWriter, _ *http.Request) {
		rotated++
		_ = json.NewEncoder(w).Encode(tunnel.RotateResult{PublicKey: "NEW=", PreviousPublicKey: "OLD=", RotatedAt: time.Unix(1_800_000_000, 0).UTC()})
	})
	mux.HandleFunc("GET "+tunnel.PathTunnels, func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(tunnel.Status{Device: "wg-a", PublicKey: "NEW=", Tunnels: []tunnel.Tunnel{{Cluster: "b", Gateway: "b-gw", PublicKey: "PEER="}}})
	})
	nodeRotated := 0
	mux.HandleFunc("POST "+nodenet.RotatePath, func(w http.ResponseWriter, _ *http.Request) {
		nodeRotated++
		_ = json.NewEncoder(w).Encode(nodenet.RotateResult{PublicKey: "NODENEW=", PreviousPublicKey: "NODEOLD=",
			RotatedAt: time.Unix(1_800_000_000, 0).UTC(), Warning: "not published yet"})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"keys", "rotate", "--socket", sock}, ExitOK, []string{"PUBLIC KEY", "NEW=", "OLD=", "2027-01-15T08:00:00Z"}},
		{[]string{"keys", "rotate", "--socket", sock, "-o", "json"}, ExitOK, []string{`"publicKey": "NEW="`, `"previousPublicKey": "OLD="`}},
		{[]string{"keys", "show", "--socket", sock}, ExitOK, []string{"wg-a", "NEW=", "b-gw", "PEER="}},
		{[]string{"keys", "rotate", "--socket", filepath.Join(t.TempDir(), "none.sock")}, ExitError, []string{"no agent answers"}},
		{[]string{"keys", "rotate", "extra"}, ExitUsage, nil},
		{[]string{"keys", "rotate", "--socket", sock, "-o", "xml"}, ExitUsage, nil},
		{[]string{"keys", "rotate", "--node", "--socket", sock}, ExitOK, []string{"NODENEW=", "NODEOLD=", "warning: not published yet"}},
		{[]string{"keys", "rotate", "--node", "--socket", sock, "-o", "json"}, ExitOK, []string{`"publicKey": "NODENEW="`}},
		{[]string{"keys", "rotate", "--node", "--socket", sock, "-o", "xml"}, ExitUsage, nil},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, env{stdout: &out, stderr: &errb, getenv: func(string) string { return "" }})
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d (stderr %s)", tc.args, code, tc.code, errb.String())
		}
		for _, w := range tc.want {
			if !strings.Contains(out.String()+errb.String(), w) {
				t.Errorf("%v: output lacks %q:\n%s%s", tc.args, w, out.String(), errb.String())
			}
		}
	}
	if rotated != 2 || nodeRotated != 2 {
		t.Errorf("%d tunnel and %d node rotations, want 2 each (a usage error must not rotate)", rotated, nodeRotated)
	}
}

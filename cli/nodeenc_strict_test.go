package cli

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func TestNodeEncryptionStrictTier(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flag    bool
		changed bool
		env     string
		want    string
	}{
		{name: "neither: the ConfigMap decides"},
		{name: "flag", flag: true, changed: true, want: "true"},
		{name: "flag false over env", changed: true, env: "true", want: "false"},
		{name: "env (config.Load validates it)", env: "yes", want: "yes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := nodeEncryptionStrictTier(tc.flag, tc.changed, func(k string) string {
				if k == "NODE_ENCRYPTION_STRICT" {
					return tc.env
				}
				return ""
			})
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestMeshRunNodeEncryptionStrictFlag: --node-encryption-strict needs --node-encryption
// wireguard (usage error, exit 2); with it the run gets past the checks to the (absent)
// cluster key: exit 1.
func TestMeshRunNodeEncryptionStrictFlag(t *testing.T) {
	dir := t.TempDir()
	base := []string{"mesh", "run", "--cluster-id", "edge-1", "--cluster-key", filepath.Join(dir, "no-such.key"),
		"--socket", filepath.Join(dir, "mesh.sock"), "--no-beacons", "--log-level", "error",
		"--pod-network", "--cluster-cidr", "10.244.0.0/16", "--database", filepath.Join(dir, "db"), "--node-ip", "192.0.2.10",
		"--node-encryption-strict"}
	for _, tc := range []struct {
		enc  string
		code int
		want string
	}{
		{"wireguard", ExitError, "no-such.key"},
		{"none", ExitUsage, "--node-encryption-strict needs --node-encryption wireguard"},
	} {
		t.Run(tc.enc, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(append(append([]string(nil), base...), "--node-encryption="+tc.enc), env{stdout: &out, stderr: &errb, getenv: func(string) string { return "" }})
			if code != tc.code || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("exit %d (want %d), stderr %q lacks %q", code, tc.code, errb.String(), tc.want)
			}
		})
	}
}

package cli

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestMeshRunNodeEncryptionFlag: --node-encryption takes wireguard or none (usage error,
// exit 2, naming the flag otherwise); a valid value gets past the checks to the (absent)
// cluster key: exit 1.
func TestMeshRunNodeEncryptionFlag(t *testing.T) {
	dir := t.TempDir()
	base := []string{"mesh", "run", "--cluster-id", "edge-1", "--cluster-key", filepath.Join(dir, "no-such.key"),
		"--socket", filepath.Join(dir, "mesh.sock"), "--no-beacons", "--log-level", "error",
		"--pod-network", "--cluster-cidr", "10.244.0.0/16", "--database", filepath.Join(dir, "db"), "--node-ip", "192.0.2.10"}
	for _, tc := range []struct {
		value string
		code  int
		want  string
	}{
		{"wireguard", ExitError, "no-such.key"},
		{"none", ExitError, "no-such.key"},
		{"ipsec", ExitUsage, `--node-encryption "ipsec": accepted values are wireguard and none`},
		{"", ExitUsage, `--node-encryption "": accepted values`},
	} {
		t.Run(tc.value, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(append(append([]string(nil), base...), "--node-encryption="+tc.value), env{stdout: &out, stderr: &errb, getenv: func(string) string { return "" }})
			if code != tc.code || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("exit %d (want %d), stderr %q lacks %q", code, tc.code, errb.String(), tc.want)
			}
		})
	}
}

// TestMeshRunNodeKeyRotationFlag: --node-encryption-key-rotation is 0 or at least 1m.
func TestMeshRunNodeKeyRotationFlag(t *testing.T) {
	dir := t.TempDir()
	base := []string{"mesh", "run", "--cluster-id", "edge-1", "--cluster-key", filepath.Join(dir, "no-such.key"),
		"--socket", filepath.Join(dir, "mesh.sock"), "--no-beacons", "--log-level", "error",
		"--pod-network", "--cluster-cidr", "10.244.0.0/16", "--database", filepath.Join(dir, "db"), "--node-ip", "192.0.2.10",
		"--node-encryption", "wireguard"}
	for _, tc := range []struct {
		value string
		code  int
		want  string
	}{
		{"24h", ExitError, "no-such.key"},
		{"0", ExitError, "no-such.key"},
		{"30s", ExitUsage, "--node-encryption-key-rotation 30s: want 0 (off) or at least 1m0s"},
	} {
		t.Run(tc.value, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(append(append([]string(nil), base...), "--node-encryption-key-rotation="+tc.value), env{stdout: &out, stderr: &errb, getenv: func(string) string { return "" }})
			if code != tc.code || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("exit %d (want %d), stderr %q lacks %q", code, tc.code, errb.String(), tc.want)
			}
		})
	}
}

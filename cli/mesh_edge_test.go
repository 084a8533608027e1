package cli

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestMeshRunPodNetworkFlags: the --pod-network flags are checked before any key file is
// read, and a usage error (exit 2) names the flag at fault. A valid set gets past the
// checks and fails later reading the (absent) cluster key: exit 1, not 2.
func TestMeshRunPodNetworkFlags(t *testing.T) {
	dir := t.TempDir()
	base := []string{"mesh", "run", "--cluster-id", "edge-1", "--cluster-key", filepath.Join(dir, "no-such.key"),
		"--socket", filepath.Join(dir, "mesh.sock"), "--no-beacons", "--log-level", "error"}
	good := []string{"--pod-network", "--cluster-cidr", "10.244.0.0/16", "--database", filepath.Join(dir, "db"), "--advertise", "192.0.2.10"}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no cluster-cidr", []string{"--pod-network", "--database", filepath.Join(dir, "db"), "--node-ip", "192.0.2.10"}, ExitUsage, "--cluster-cidr"},
		{"bad cluster-cidr", []string{"--pod-network", "--cluster-cidr", "10.244.0.0", "--database", "x", "--node-ip", "192.0.2.10"}, ExitUsage, "--cluster-cidr"},
		{"ipv6 cluster-cidr", []string{"--pod-network", "--cluster-cidr", "fd00::/48", "--database", "x", "--node-ip", "192.0.2.10"}, ExitUsage, "--cluster-cidr"},
		{"no database", []string{"--pod-network", "--cluster-cidr", "10.244.0.0/16", "--node-ip", "192.0.2.10"}, ExitUsage, "--database"},
		{"block larger than cidr", append(append([]string(nil), good...), "--node-block-size", "8"), ExitUsage, "--node-block-size"},
		{"block too small", append(append([]string(nil), good...), "--node-block-size", "31"), ExitUsage, "--node-block-size"},
		{"no node ip", []string{"--pod-network", "--cluster-cidr", "10.244.0.0/16", "--database", "x"}, ExitUsage, "--node-ip"},
		{"bad node ip", []string{"--pod-network", "--cluster-cidr", "10.244.0.0/16", "--database", "x", "--node-ip", "node-a"}, ExitUsage, "--node-ip"},
		{"advertise hostname", []string{"--pod-network", "--cluster-cidr", "10.244.0.0/16", "--database", "x", "--advertise", "node-a:7946"}, ExitUsage, "--advertise"},
		{"empty conflist", append(append([]string(nil), good...), "--cni-conflist", ""), ExitUsage, "--cni-conflist"},
		{"bad masquerade", append(append([]string(nil), good...), "--masquerade=maybe"), ExitUsage, "masquerade"},
		{"valid: node ip from --advertise", good, ExitError, "no-such.key"},
		{"valid: --node-ip, /26 blocks", []string{"--pod-network", "--cluster-cidr", "10.244.0.0/16,10.96.0.0/12", "--database", "x",
			"--node-ip", "192.0.2.10", "--node-block-size", "26", "--masquerade=false"}, ExitError, "no-such.key"},
		{"without --pod-network the flags are not required", nil, ExitError, "no-such.key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			args := append(append([]string(nil), base...), tc.args...)
			code := run(args, env{stdout: &out, stderr: &errb, getenv: func(string) string { return "" }})
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, errb.String())
			}
			if !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("error does not name %q: %s", tc.want, errb.String())
			}
		})
	}
}

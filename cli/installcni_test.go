package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/patronus/patronus/dataplane/link"
	"github.com/patronus/patronus/manifests"
	"github.com/patronus/patronus/store"
)

func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, env{stdout: &out, stderr: &errb, stdin: strings.NewReader(""), getenv: func(string) string { return "" }})
	return code, out.String(), errb.String()
}

func TestInstallCNI(t *testing.T) {
	dir := t.TempDir()
	bin, conf := filepath.Join(dir, "opt", "cni", "bin"), filepath.Join(dir, "etc", "cni", "net.d")
	code, out, errOut := runCmd("install-cni", "--bin-dir", bin, "--conf-dir", conf)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	self, _ := os.Executable()
	want, _ := os.ReadFile(self)
	got, err := os.ReadFile(filepath.Join(bin, "patronus-cni"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("plugin is not a copy of the running binary (%v)", err)
	}
	if fi, _ := os.Stat(filepath.Join(bin, "patronus-cni")); fi.Mode().Perm() != 0o755 {
		t.Fatalf("plugin mode %v", fi.Mode())
	}
	cl, err := os.ReadFile(filepath.Join(conf, "10-patronus.conflist"))
	if err != nil || !bytes.Equal(cl, manifests.ConfList) {
		t.Fatalf("conflist is not the embedded default (%v)", err)
	}
	var parsed struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
		Name        string   `json:"name"`
	}
	if err := json.Unmarshal(cl, &parsed); err != nil || parsed.CNIVersion != "1.0.0" || strings.Join(parsed.CNIVersions, ",") != "1.0.0,1.1.0" || parsed.Name != "patronus-k8s" {
		t.Fatalf("default conflist versions/name: %+v %v", parsed, err)
	}
	if !strings.Contains(out, filepath.Join(bin, "patronus-cni")) {
		t.Fatalf("output does not name the plugin path: %s", out)
	}
	// No temporary files left behind.
	for _, d := range []string{bin, conf} {
		ents, _ := os.ReadDir(d)
		if len(ents) != 1 {
			t.Fatalf("%s holds %d files, want 1", d, len(ents))
		}
	}

	// A custom conflist replaces the file; an invalid one installs nothing.
	custom := filepath.Join(dir, "custom.conflist")
	os.WriteFile(custom, []byte(`{"cniVersion":"1.1.0","name":"x","plugins":[{"type":"patronus-cni","ipam":{"type":"dhcp"}}]}`), 0o644)
	if code, _, errOut := runCmd("install-cni", "--bin-dir", bin, "--conf-dir", conf, "--conflist", custom); code != 0 {
		t.Fatalf("custom conflist: exit %d: %s", code, errOut)
	}
	if b, _ := os.ReadFile(filepath.Join(conf, "10-patronus.conflist")); !strings.Contains(string(b), `"name":"x"`) {
		t.Fatalf("custom conflist not written: %s", b)
	}
	bad := filepath.Join(dir, "bad.conflist")
	os.WriteFile(bad, []byte(`{"cniVersion":"1.1.0","name":"x","plugins":[{"type":"patronus-cni","ipam":{"type":"dhcp"},"sdwan":{"default_qos_class":"gold"}}]}`), 0o644)
	empty := filepath.Join(dir, "empty")
	code, _, errOut = runCmd("install-cni", "--bin-dir", empty, "--conf-dir", empty, "--conflist", bad)
	if code != ExitError || !strings.Contains(errOut, "sdwan.default_qos_class") {
		t.Fatalf("invalid conflist: exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(empty); !os.IsNotExist(err) {
		t.Fatalf("an invalid conflist installed something")
	}
}

// --no-conflist (the DaemonSet's init step) installs the plugin and leaves the conf dir
// alone, whether it is empty or holds the conflist the agent wrote.
func TestInstallCNINoConflist(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing string // conflist already in the conf dir ("" = none)
		args     []string
		code     int
	}{
		{name: "empty conf dir", code: 0},
		{name: "agent's conflist kept", existing: `{"agent":"wrote this"}`, code: 0},
		{name: "with --conflist", args: []string{"--conflist", "x.conflist"}, code: ExitUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
			path := filepath.Join(conf, manifests.ConfListName)
			if tc.existing != "" {
				os.MkdirAll(conf, 0o755)
				os.WriteFile(path, []byte(tc.existing), 0o644)
			}
			code, out, errOut := runCmd(append([]string{"install-cni", "--no-conflist", "--bin-dir", bin, "--conf-dir", conf}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, errOut)
			}
			if tc.code != 0 {
				if _, err := os.Stat(bin); !os.IsNotExist(err) {
					t.Fatal("a usage error installed something")
				}
				return
			}
			if _, err := os.Stat(filepath.Join(bin, "patronus-cni")); err != nil {
				t.Fatalf("plugin not installed: %v", err)
			}
			got, err := os.ReadFile(path)
			switch {
			case tc.existing == "" && !os.IsNotExist(err):
				t.Fatalf("a conflist was written (%v): %s", err, got)
			case tc.existing != "" && string(got) != tc.existing:
				t.Fatalf("existing conflist changed: %s", got)
			}
			if strings.Contains(out, "wrote") {
				t.Fatalf("output claims a conflist was written: %s", out)
			}
		})
	}
}

func TestStatusNothingInstalled(t *testing.T) {
	dir := t.TempDir()
	code, out, _ := runCmd("status", "--cni-bin-dir", dir, "--database", filepath.Join(dir, "db", "k8s.db"), "--bridge", "pt-nobr0")
	if code != ExitError {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{"✗ CNI plugin not installed at " + dir, "✗ Bridge interface: pt-nobr0 not found", "✗ SD-WAN database: "} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "db")); !os.IsNotExist(err) {
		t.Fatalf("status created the database")
	}
}

// TestStatusHealthyNode runs status inside a node namespace that has the bridge, the
// plugin and a database with pods.
func TestStatusHealthyNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace with a bridge (CI runs it as root)")
	}
	dir := t.TempDir()
	if code, _, errOut := runCmd("install-cni", "--bin-dir", dir, "--conf-dir", dir); code != 0 {
		t.Fatal(errOut)
	}
	dbPath := filepath.Join(dir, "k8s-sdwan.db")
	db, err := store.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := db.PutPod(context.Background(), store.Pod{ContainerID: id, IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	node, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close(); testutils.UnmountNS(node) })
	var code int
	var out, outJSON string
	err = node.Do(func(ns.NetNS) error {
		if _, err := (link.Netlink{}).EnsureBridge(link.BridgeSpec{Name: "cni-bridge0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.244.0.1/16")}}); err != nil {
			return err
		}
		code, out, _ = runCmd("status", "--cni-bin-dir", dir, "--database", dbPath)
		_, outJSON, _ = runCmd("status", "--cni-bin-dir", dir, "--database", dbPath, "-o", "json")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "✓ CNI plugin installed: " + filepath.Join(dir, "patronus-cni") + "\n" +
		"✓ Bridge interface: cni-bridge0 (10.244.0.1/16)\n" +
		"✓ SD-WAN database: " + dbPath + "\n" +
		"✓ Pods managed: 3\n"
	if code != 0 || out != want {
		t.Fatalf("exit %d, output:\n%s\nwant:\n%s", code, out, want)
	}
	var s Status
	if err := json.Unmarshal([]byte(outJSON), &s); err != nil || s.CNI.Database.PodsManaged != 3 || !s.CNI.Bridge.Present || !s.CNI.Plugin.Installed {
		t.Fatalf("json: %v\n%s", err, outJSON)
	}
}

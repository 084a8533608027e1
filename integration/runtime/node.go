// Package runtime runs a real container runtime node for integration tests: Debian's
// containerd 1.6 with its CRI plugin, driven by crictl, inside a network namespace and a
// private mount namespace of its own (scripts/containerd/node.sh), with CNI plugins and a
// conflist in temporary directories. Pod sandboxes created here get their network from
// the CNI plugin exactly as kubelet's runtime would call it.
//
// Everything a Node creates (netns, containerd and its shims, containers, cgroups, state
// directory) is removed in t.Cleanup, also after a failure.
package runtime

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Tools are the binaries and scripts a Node needs.
type Tools struct {
	RepoRoot   string // module root (holds scripts/)
	Crictl     string // crictl binary
	PluginsDir string // reference CNI plugins (loopback, host-local, bridge...)
	Patronus   string // the patronus binary, installed into the node as patronus-cni
}

// FindTools locates or builds what a runtime test needs, or skips the test saying why.
// Overrides: PATRONUS_CRICTL (crictl binary), PATRONUS_CNI_PLUGINS (reference plugin
// dir), PATRONUS_BIN (patronus binary). Without them the project's scripts build them
// into the cache (TestMain builds patronus once for the package).
func FindTools(t testing.TB) Tools {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("runtime test needs root: it runs containerd in its own network and mount namespaces")
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare", "ip", "ping"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("runtime test needs %s on PATH (install with ./scripts/deps.sh): %v", bin, err)
		}
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	tools := Tools{RepoRoot: root}

	tools.Crictl = os.Getenv("PATRONUS_CRICTL")
	if tools.Crictl == "" {
		tools.Crictl = filepath.Join(scriptOutput(t, root, "scripts/containerd/build-crictl.sh"), "crictl")
	}
	tools.PluginsDir = os.Getenv("PATRONUS_CNI_PLUGINS")
	if tools.PluginsDir == "" {
		tools.PluginsDir = scriptOutput(t, root, "scripts/build-cni-plugins.sh")
	}
	tools.Patronus = os.Getenv("PATRONUS_BIN")
	if tools.Patronus == "" {
		t.Fatal("PATRONUS_BIN is not set: build patronus (make build) and point PATRONUS_BIN at it; this package's TestMain does that when run as root")
	}
	return tools
}

// scriptOutput runs one of the project's build scripts and returns the last line it
// printed (the directory it built into). A cold build can be slow: it gets the test's
// remaining time less a minute, then fails with a message saying how to prebuild,
// rather than letting the test binary time out (which would skip every cleanup).
func scriptOutput(t testing.TB, root, script string) string {
	t.Helper()
	ctx := context.Background()
	if dt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := dt.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, d.Add(-time.Minute))
			defer cancel()
		}
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, script))
	cmd.Dir = root
	// Kill the whole group (go install and the compilers), not just the script.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		t.Fatalf("%s did not finish before the test deadline (a cold build on a busy machine); run it once beforehand, or go test with a longer -timeout (scripts/test.sh uses 40m)\n%s", script, stderr.String())
	}
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// NodeOptions configure a Node.
type NodeOptions struct {
	Tools Tools
	// Plugins are copied from Tools.PluginsDir into the node's CNI bin dir ("loopback" is
	// always added: containerd's CRI sets up the pod's lo with it).
	Plugins []string
	// PatronusCNI installs Tools.Patronus as patronus-cni with `patronus install-cni`
	// (with ConfList as --conflist when set).
	PatronusCNI bool
	// ConfList builds the conflist from the node's directories; it is written to
	// cni/net.d/10-<name>.conflist (by install-cni with PatronusCNI).
	ConfList func(n *Node) string
}

// Node is one running containerd node.
type Node struct {
	Dir          string // state dir: containerd root, state, socket, CNI dirs
	Netns        string // the node's network namespace (in /run/netns)
	CgroupParent string // cgroup parent every pod must use
	BinDir       string // CNI bin dir
	ConfDir      string // CNI conf dir
	IPAMDir      string // host-local dataDir for conflists built by the test
	DBPath       string // sdwan.database for conflists built by the test
	tools        Tools
}

// StartNode starts containerd in a fresh node netns with the images imported and the CNI
// plugins and conflist installed. Cleanup is registered on t.
func StartNode(t testing.TB, opts NodeOptions) *Node {
	t.Helper()
	suffix := randomHex(t, 3)
	// A short path: containerd's sockets live in it and unix socket paths are limited.
	dir, err := os.MkdirTemp("", "pt-rt-")
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{
		Dir:     dir,
		Netns:   "pt-rt-" + suffix,
		BinDir:  filepath.Join(dir, "cni", "bin"),
		ConfDir: filepath.Join(dir, "cni", "net.d"),
		IPAMDir: filepath.Join(dir, "ipam"),
		DBPath:  filepath.Join(dir, "db", "k8s-sdwan.db"),
		tools:   opts.Tools,
	}
	t.Cleanup(func() { n.Stop(t) })

	if out, err := n.script("up", dir, n.Netns); err != nil {
		t.Fatalf("start containerd node: %v\n%s", err, out)
	}
	cg, err := os.ReadFile(filepath.Join(dir, "cgroup-parent"))
	if err != nil {
		t.Fatal(err)
	}
	n.CgroupParent = strings.TrimSpace(string(cg))

	for _, p := range append([]string{"loopback"}, opts.Plugins...) {
		copyFile(t, filepath.Join(opts.Tools.PluginsDir, p), filepath.Join(n.BinDir, p))
	}
	conf := ""
	if opts.ConfList != nil {
		conf = opts.ConfList(n)
		var probe struct{ Name string }
		if err := json.Unmarshal([]byte(conf), &probe); err != nil || probe.Name == "" {
			t.Fatalf("conflist is not JSON with a name (%v): %s", err, conf)
		}
		if !opts.PatronusCNI {
			if err := os.WriteFile(filepath.Join(n.ConfDir, "10-"+probe.Name+".conflist"), []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if opts.PatronusCNI {
		// What the DaemonSet's init step does: patronus install-cni puts the plugin and the
		// conflist into the runtime's CNI dirs.
		args := []string{"install-cni", "--bin-dir", n.BinDir, "--conf-dir", n.ConfDir}
		if conf != "" {
			path := filepath.Join(dir, "conflist.json")
			if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--conflist", path)
		}
		if out, err := exec.Command(opts.Tools.Patronus, args...).CombinedOutput(); err != nil {
			t.Fatalf("patronus %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	cmd := exec.Command(filepath.Join(opts.Tools.RepoRoot, "scripts", "images.sh"), "--import", n.socket())
	cmd.Dir = opts.Tools.RepoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build and import images: %v\n%s", err, out)
	}
	n.waitNetworkReady(t)
	return n
}

func (n *Node) socket() string { return filepath.Join(n.Dir, "containerd.sock") }

func (n *Node) script(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(n.tools.RepoRoot, "scripts", "containerd", "node.sh"), args...)
	cmd.Env = append(os.Environ(), "CRICTL="+n.tools.Crictl)
	return cmd.CombinedOutput()
}

// Stop removes every pod (CNI DEL), stops containerd and everything it started, and
// removes the netns, cgroups and state dir. It is safe to call more than once, and works
// after containerd crashed (then no DEL runs; the state dir goes with everything in it).
func (n *Node) Stop(t testing.TB) {
	if t.Failed() {
		if b, err := os.ReadFile(filepath.Join(n.Dir, "containerd.log")); err == nil {
			lines := strings.Split(string(b), "\n")
			if len(lines) > 60 {
				lines = lines[len(lines)-60:]
			}
			t.Logf("containerd log (last lines):\n%s", strings.Join(lines, "\n"))
		}
	}
	if out, err := n.script("down", n.Dir); err != nil {
		t.Errorf("stop containerd node: %v\n%s", err, out)
	}
	if err := os.RemoveAll(n.Dir); err != nil {
		t.Errorf("remove node state: %v", err)
	}
	// A leak here would outlive the test: say so.
	if _, err := os.Stat("/run/netns/" + n.Netns); err == nil {
		t.Errorf("node netns %s left behind", n.Netns)
	}
	if n.CgroupParent != "" {
		if left, _ := filepath.Glob("/sys/fs/cgroup/*" + n.CgroupParent); len(left) > 0 {
			t.Errorf("cgroups left behind: %v", left)
		}
	}
}

// ContainerdPID is the pid of the node's containerd.
func (n *Node) ContainerdPID(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.Dir, "containerd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// waitNetworkReady waits until the CRI plugin has loaded the CNI config (it watches the
// conf dir), so the first RunPodSandbox does not race with it.
func (n *Node) waitNetworkReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		out, err := n.Crictl("info")
		if err == nil {
			var info struct {
				Status struct {
					Conditions []struct {
						Type   string
						Status bool
						Reason string
					}
				}
			}
			if json.Unmarshal(out, &info) == nil {
				ready := false
				for _, c := range info.Status.Conditions {
					if c.Type == "NetworkReady" {
						ready = c.Status
						last = c.Reason
					}
				}
				if ready {
					return
				}
			}
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("CRI network not ready after 30s: %s", last)
}

// Crictl runs crictl against this node, inside the node's netns (crictl exec streams
// through containerd's server on the node's loopback).
func (n *Node) Crictl(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	full := append([]string{"--net=/run/netns/" + n.Netns, "--", n.tools.Crictl, "--config", filepath.Join(n.Dir, "crictl.yaml")}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Pod is a running pod sandbox.
type Pod struct {
	ID, Name, Namespace, UID string
	ConfigPath               string // the pod config JSON (crictl create needs it)
	IP                       netip.Addr
	PID                      int // the sandbox's pause process, in the pod netns
}

// RunPod runs a pod sandbox (crictl runp), which makes containerd call CNI ADD.
func (n *Node) RunPod(t testing.TB, namespace, name string) Pod {
	t.Helper()
	p := Pod{Name: name, Namespace: namespace, UID: "uid-" + randomHex(t, 8)}
	cfg := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": namespace, "uid": p.UID, "attempt": 0},
		"log_directory": filepath.Join(n.Dir, "logs", name),
		"linux":         map[string]any{"cgroup_parent": n.CgroupParent},
	}
	b, _ := json.Marshal(cfg)
	p.ConfigPath = filepath.Join(n.Dir, "pod-"+name+".json")
	if err := os.WriteFile(p.ConfigPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := n.Crictl("runp", p.ConfigPath)
	if err != nil {
		t.Fatalf("runp %s/%s: %v", namespace, name, err)
	}
	p.ID = strings.TrimSpace(string(out))
	insp := n.InspectPod(t, p.ID)
	if insp.Status.State != "SANDBOX_READY" {
		t.Fatalf("pod %s is %s, want SANDBOX_READY", name, insp.Status.State)
	}
	p.IP, err = netip.ParseAddr(insp.Status.Network.IP)
	if err != nil {
		t.Fatalf("pod %s has no IP in crictl inspectp (%q): %v", name, insp.Status.Network.IP, err)
	}
	p.PID = insp.Info.PID
	return p
}

// PodInspect is the part of `crictl inspectp` the tests read.
type PodInspect struct {
	Status struct {
		ID      string
		State   string
		Network struct {
			IP string `json:"ip"`
		}
	}
	Info struct {
		PID       int             `json:"pid"`
		CNIResult json.RawMessage `json:"cniResult"`
	}
}

// InspectPod returns `crictl inspectp` for a pod.
func (n *Node) InspectPod(t testing.TB, id string) PodInspect {
	t.Helper()
	out, err := n.Crictl("inspectp", id)
	if err != nil {
		t.Fatal(err)
	}
	var insp PodInspect
	if err := json.Unmarshal(out, &insp); err != nil {
		t.Fatalf("decode inspectp: %v\n%s", err, out)
	}
	return insp
}

// RemovePod stops (CNI DEL) and removes a pod sandbox.
func (n *Node) RemovePod(t testing.TB, p Pod) {
	t.Helper()
	if _, err := n.Crictl("stopp", p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Crictl("rmp", p.ID); err != nil {
		t.Fatal(err)
	}
}

// StartContainer starts a container from the local busybox image in pod p, running
// command, and returns its ID.
func (n *Node) StartContainer(t testing.TB, p Pod, name string, command ...string) string {
	t.Helper()
	cfg := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": "patronus.local/busybox:1.35"},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	}
	b, _ := json.Marshal(cfg)
	path := filepath.Join(n.Dir, "ctr-"+p.Name+"-"+name+".json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := n.Crictl("create", p.ID, path, p.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(string(out))
	if _, err := n.Crictl("start", id); err != nil {
		t.Fatal(err)
	}
	return id
}

// PingFromPod pings dst once from inside pod p's network namespace (the host's ping,
// entered into the sandbox's netns through its pause process).
func (n *Node) PingFromPod(p Pod, dst netip.Addr) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "-t", fmt.Sprint(p.PID), "-n", "ping", "-c", "1", "-W", "3", dst.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from pod %s: %w\n%s", dst, p.Name, err, out)
	}
	return nil
}

// InNode runs a command in the node's network namespace.
func (n *Node) InNode(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + n.Netns, "--"}, args...)...).CombinedOutput()
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("copy CNI plugin: %v", err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatalf("copy CNI plugin: %v", err)
	}
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

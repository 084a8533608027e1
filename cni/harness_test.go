package cni_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/patronus/patronus/cni"
	"github.com/patronus/patronus/dataplane/link"
	"github.com/patronus/patronus/store"
)

// The privileged tests exec the real binary through libcni, as a runtime does. The plugin
// runs inside a per-test "node" namespace (its bridge and ip_forward never touch the root
// namespace); every pod has its own namespace.

var (
	binOnce sync.Once
	binDir  string // patronus-cni and the reference plugins, side by side
	binErr  error
)

func moduleRoot() string { return filepath.Join("..") }

// pluginDir builds (once) the directory the tests hand libcni as CNI_PATH.
func pluginDir(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pt-cni-bin-")
		if err != nil {
			binErr = err
			return
		}
		binDir = dir
		bin := os.Getenv("PATRONUS_BIN")
		if bin == "" {
			bin = filepath.Join(dir, "patronus")
			cmd := exec.Command("go", "build", "-o", bin, ".")
			cmd.Dir = moduleRoot()
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				binErr = fmt.Errorf("go build patronus: %v\n%s", err, out)
				return
			}
		}
		if err := copyFile(bin, filepath.Join(dir, cni.PluginName)); err != nil {
			binErr = err
			return
		}
		ref := os.Getenv("PATRONUS_CNI_PLUGINS")
		if ref == "" {
			cmd := exec.Command("./scripts/build-cni-plugins.sh")
			cmd.Dir = moduleRoot()
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				binErr = fmt.Errorf("scripts/build-cni-plugins.sh (set PATRONUS_CNI_PLUGINS to skip the build): %v", err)
				return
			}
			ref = strings.TrimSpace(string(out))
		}
		for _, p := range []string{"host-local", "bandwidth", "portmap", "loopback"} {
			if err := os.Symlink(filepath.Join(ref, p), filepath.Join(dir, p)); err != nil {
				binErr = err
				return
			}
		}
		// The host-local binary under another name: an IPAM type the plugin does not
		// serve in-process, so it must delegate (and share host-local's files).
		binErr = os.Symlink(filepath.Join(ref, "host-local"), filepath.Join(dir, "host-local-exec"))
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, bridges and veths (CI runs it as root)")
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// makeNS creates a named network namespace removed at cleanup and returns its path.
func makeNS(t *testing.T, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("pt-%s-%s", prefix, randHex(4))
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	h, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		// The thread is in the wrong namespace: never let it run other goroutines.
		t.Fatalf("restore namespace: %v", serr)
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	h.Close()
	t.Cleanup(func() { netns.DeleteNamed(name) })
	return filepath.Join("/var/run/netns", name)
}

// harness is one node: its namespace, data dir, database and libcni.
type harness struct {
	t        *testing.T
	dir      string
	nodePath string
	node     ns.NetNS
	cni      *libcni.CNIConfig
	dataDir  string
	db       string
	network  string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	requireRoot(t)
	bins := pluginDir(t)
	dir := t.TempDir()
	h := &harness{t: t, dir: dir, dataDir: filepath.Join(dir, "ipam"), db: filepath.Join(dir, "db", "k8s-sdwan.db"), network: "patronus-k8s"}
	h.nodePath = makeNS(t, "node")
	n, err := ns.GetNS(h.nodePath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	h.node = n
	// libcni's cache (prevResult for CHECK/DEL) stays in the test's dir, not /var/lib/cni.
	h.cni = libcni.NewCNIConfigWithCacheDir([]string{bins}, filepath.Join(dir, "cache"), nil)
	return h
}

// plugin returns the patronus-cni entry as a map for tests to modify.
func (h *harness) plugin() map[string]any {
	return map[string]any{
		"type":   cni.PluginName,
		"bridge": "cni-bridge0",
		"mtu":    1400,
		"ipam": map[string]any{
			"type":       "host-local",
			"subnet":     "10.244.0.0/16",
			"rangeStart": "10.244.1.10",
			"rangeEnd":   "10.244.254.254",
			"gateway":    "10.244.0.1",
			"routes":     []any{map[string]any{"dst": "0.0.0.0/0"}, map[string]any{"dst": "10.96.0.0/12"}},
			"dataDir":    h.dataDir,
		},
		"sdwan": map[string]any{
			"database":                  h.db,
			"cluster_id":                "cluster-1",
			"enable_policy_enforcement": false,
			"default_qos_class":         "best-effort",
		},
	}
}

func (h *harness) list(version string, plugins ...map[string]any) *libcni.NetworkConfigList {
	h.t.Helper()
	if len(plugins) == 0 {
		plugins = []map[string]any{h.plugin()}
	}
	b, err := json.Marshal(map[string]any{"cniVersion": version, "name": h.network, "plugins": plugins})
	if err != nil {
		h.t.Fatal(err)
	}
	l, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		h.t.Fatal(err)
	}
	return l
}

// inNode runs f on a thread in the node namespace, so the plugin processes libcni forks
// from it start there.
func (h *harness) inNode(f func() error) error {
	return h.node.Do(func(ns.NetNS) error { return f() })
}

type pod struct {
	id, netns string
	rt        *libcni.RuntimeConf
}

func (h *harness) newPod(name string) pod {
	h.t.Helper()
	path := makeNS(h.t, "pod")
	id := "ctr-" + name + "-" + randHex(8)
	return pod{id: id, netns: path, rt: &libcni.RuntimeConf{
		ContainerID: id, NetNS: path, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", "uid-" + name}},
	}}
}

func (h *harness) add(l *libcni.NetworkConfigList, p pod) (libcniResult, error) {
	var res libcniResult
	err := h.inNode(func() error {
		r, err := h.cni.AddNetworkList(context.Background(), l, p.rt)
		if err != nil {
			return err
		}
		res.raw = r
		return nil
	})
	return res, err
}

func (h *harness) del(l *libcni.NetworkConfigList, p pod) error {
	return h.inNode(func() error { return h.cni.DelNetworkList(context.Background(), l, p.rt) })
}

func (h *harness) check(l *libcni.NetworkConfigList, p pod) error {
	return h.inNode(func() error { return h.cni.CheckNetworkList(context.Background(), l, p.rt) })
}

func (h *harness) status(l *libcni.NetworkConfigList) error {
	return h.inNode(func() error { return h.cni.GetStatusNetworkList(context.Background(), l) })
}

// gc calls the plugins' GC with a libcni whose cache is empty, so nothing is removed by
// libcni's own cached-attachment DELs: what goes, the plugin removed.
func (h *harness) gc(l *libcni.NetworkConfigList, valid ...pod) error {
	c := libcni.NewCNIConfigWithCacheDir(h.cni.Path, filepath.Join(h.dir, "empty-cache-"+randHex(4)), nil)
	args := &libcni.GCArgs{}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, gcAttachment(p))
	}
	return h.inNode(func() error { return c.GCNetworkList(context.Background(), l, args) })
}

// hostVeths lists the pt<hash> veths in the node namespace.
func (h *harness) hostVeths() []string {
	h.t.Helper()
	var names []string
	err := h.inNode(func() error {
		ls, err := link.Netlink{}.HostVeths()
		for _, l := range ls {
			names = append(names, l.Name)
		}
		return err
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return names
}

// reservations maps reserved IP -> "containerID/ifname" in the host-local data dir.
func (h *harness) reservations() map[string]string {
	h.t.Helper()
	out := map[string]string{}
	dir := filepath.Join(h.dataDir, h.network)
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return out
	}
	if err != nil {
		h.t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "lock" || strings.HasPrefix(e.Name(), "last_reserved_ip") {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		out[e.Name()] = strings.ReplaceAll(strings.TrimSpace(string(b)), "\r\n", "/")
	}
	return out
}

func (h *harness) pods() []store.Pod {
	h.t.Helper()
	db, err := store.Open(context.Background(), h.db)
	if err != nil {
		h.t.Fatal(err)
	}
	defer db.Close()
	ps, err := db.ListPods(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return ps
}

// assertClean fails if any veth, database row or reservation is left.
func (h *harness) assertClean() {
	h.t.Helper()
	if v := h.hostVeths(); len(v) != 0 {
		h.t.Errorf("leaked veths: %v", v)
	}
	if p := h.pods(); len(p) != 0 {
		h.t.Errorf("leaked database rows: %d (first %+v)", len(p), p[0])
	}
	if r := h.reservations(); len(r) != 0 {
		h.t.Errorf("leaked IPAM reservations: %v", r)
	}
}

// podExec runs a command inside the pod's namespace.
func podExec(t *testing.T, netnsPath string, args ...string) (string, error) {
	t.Helper()
	full := append([]string{"netns", "exec", filepath.Base(netnsPath)}, args...)
	out, err := exec.Command("ip", full...).CombinedOutput()
	return string(out), err
}

// podLinkHandle opens netlink inside the pod namespace.
func podLinkHandle(t *testing.T, netnsPath string) *netlink.Handle {
	t.Helper()
	nsh, err := netns.GetFromPath(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	nh, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nh.Close)
	return nh
}

package multinode

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/patronus/patronus/cni"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/kube/kclient"
	"github.com/patronus/patronus/manifests"
	"github.com/patronus/patronus/nodenet"
	"github.com/patronus/patronus/store"
)

// The lab: an "underlay" namespace holding a Linux bridge, and one namespace per node
// with eth0 on that bridge. Each node runs a nodenet.Controller in-process (its netlink
// and nftables work goes through handles opened in the node namespace) and gets pods
// through the real patronus-cni binary, driven by libcni from a thread in the node
// namespace with the conflist the controller wrote.

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// pluginDir is CNI_PATH: patronus-cni ($PATRONUS_BIN or built once).
func pluginDir(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pt-mn-bin-")
		if err != nil {
			binErr = err
			return
		}
		binDir = dir
		bin := os.Getenv("PATRONUS_BIN")
		if bin == "" {
			root, err := k8senv.ModuleRoot()
			if err != nil {
				binErr = err
				return
			}
			bin = filepath.Join(dir, "patronus")
			cmd := exec.Command("go", "build", "-o", bin, ".")
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				binErr = fmt.Errorf("go build patronus (set PATRONUS_BIN to skip): %v\n%s", err, out)
				return
			}
		}
		b, err := os.ReadFile(bin)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, cni.PluginName), b, 0o755)
		}
		binErr = err
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	if raw := os.Getenv(envEdgeNode); raw != "" {
		os.Exit(edgeNodeMain(raw)) // re-executed as an edge node (edge_test.go)
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, bridges, veths and VXLAN devices (CI runs it as root)")
	}
}

// requireEncryptionTools is the node-encryption tests' preamble: root, ping for the
// traffic, nft for the underlay counters.
func requireEncryptionTools(t *testing.T) {
	t.Helper()
	requireRoot(t)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("needs ping (apt-get install iputils-ping)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (apt-get install nftables) for the underlay counters")
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// makeNS creates a named namespace (removed at cleanup) and returns its name.
func makeNS(t *testing.T, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("pt-mn%s-%s", prefix, randHex(4))
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	h, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("restore namespace: %v", serr) // thread stays locked: never reused
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	h.Close()
	t.Cleanup(func() { netns.DeleteNamed(name) })
	return name
}

func nsPath(name string) string { return filepath.Join("/var/run/netns", name) }

func handleIn(t *testing.T, name string) *netlink.Handle {
	t.Helper()
	nsh, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// doIn runs f on a thread in the named namespace.
func doIn(name string, f func() error) error {
	n, err := ns.GetNS(nsPath(name))
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error { return f() })
}

type lab struct {
	t       *testing.T
	cluster *k8senv.Cluster
	client  kubernetes.Interface
	agentC  *kclient.Client // the same cluster, as the agent's packages take it
	ns      string          // namespace of the block Leases
	under   string          // underlay namespace (bridge br0)
	cidr    netip.Prefix
	nodes   map[string]*node
	encrypt nodenet.Encrypt // node-to-node encryption of nodes started from now on
	remote  []netip.Prefix  // remote clusters' pod CIDRs (nodenet Options.KeepSourceTo) of nodes started from now on
}

type node struct {
	name     string
	netns    string
	addr     netip.Addr
	dir      string
	db       *store.DB
	confList string
	ctrl     *nodenet.Controller
	cancel   context.CancelFunc
	done     chan error
	cni      *libcni.CNIConfig
	pods     []*pod
	encrypt  *nodenet.Encrypt // overrides lab.encrypt at the next start
}

type pod struct {
	name, netns string
	ip          netip.Addr
	rt          *libcni.RuntimeConf
}

// newLab makes the underlay; cluster may be nil (edge mode: no API server).
func newLab(t *testing.T, cluster *k8senv.Cluster, leaseNS string) *lab {
	requireRoot(t)
	l := &lab{t: t, cluster: cluster, ns: leaseNS, cidr: netip.MustParsePrefix("10.244.0.0/16"), nodes: map[string]*node{}}
	if cluster != nil {
		l.client = cluster.Client()
		l.agentC = cluster.AgentClient()
	}
	if cluster != nil && leaseNS != "kube-system" {
		_, err := l.client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: leaseNS}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	l.under = makeNS(t, "u")
	h := handleIn(t, l.under)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	return l
}

// addNode creates the node namespace on the underlay (address addr/24 on eth0), the
// Node object (InternalIP addr, podCIDR if given) and starts its controller.
func (l *lab) addNode(name string, addr netip.Addr, podCIDR string, extraUnderlay ...netip.Prefix) *node {
	t := l.t
	t.Helper()
	n := l.makeNode(name, addr, extraUnderlay...)

	// Node object.
	ctx := context.Background()
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if podCIDR != "" {
		obj.Spec.PodCIDR, obj.Spec.PodCIDRs = podCIDR, []string{podCIDR}
	}
	created, err := l.client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr.String()}}
	if _, err := l.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	l.start(n)
	return n
}

// makeNode creates the node namespace on the underlay, its database, conflist path and
// libcni; no controller yet.
func (l *lab) makeNode(name string, addr netip.Addr, extraUnderlay ...netip.Prefix) *node {
	t := l.t
	t.Helper()
	n := &node{name: name, addr: addr, netns: makeNS(t, "n"), dir: t.TempDir()}
	h := handleIn(t, n.netns)
	uh := handleIn(t, l.under)
	unsh, err := netns.GetFromName(l.under)
	if err != nil {
		t.Fatal(err)
	}
	defer unsh.Close()
	peer := "v" + randHex(4)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: peer, PeerNamespace: netlink.NsFd(int(unsh))}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	pl, err := uh.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	br, _ := uh.LinkByName("br0")
	if err := uh.LinkSetMaster(pl, br); err != nil {
		t.Fatal(err)
	}
	if err := uh.LinkSetUp(pl); err != nil {
		t.Fatal(err)
	}
	eth, _ := h.LinkByName("eth0")
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	for _, lk := range []string{"eth0", "lo"} {
		x, _ := h.LinkByName(lk)
		if err := h.LinkSetUp(x); err != nil {
			t.Fatal(err)
		}
	}
	// Underlay routing for nodes on another subnet of the same wire: the node reaches
	// them, but not as L2 neighbours by its subnet, so nodenet encapsulates.
	for _, p := range extraUnderlay {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatal(err)
		}
	}
	if err := doIn(n.netns, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }); err != nil {
		t.Fatal(err)
	}

	if n.db, err = store.Open(context.Background(), filepath.Join(n.dir, "db", "k8s-sdwan.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.db.Close() })
	n.confList = filepath.Join(n.dir, "net.d", manifests.ConfListName)
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir(t)}, filepath.Join(n.dir, "cache"), nil)
	l.nodes[name] = n
	return n
}

// baseConfList is the embedded conflist with this node's database and IPAM dir (a real
// node uses the defaults; the lab keeps every node's state in its own directory).
func (l *lab) baseConfList(n *node) []byte {
	var doc map[string]any
	if err := json.Unmarshal(manifests.ConfList, &doc); err != nil {
		l.t.Fatal(err)
	}
	p := doc["plugins"].([]any)[0].(map[string]any)
	p["ipam"].(map[string]any)["dataDir"] = filepath.Join(n.dir, "ipam")
	p["sdwan"] = map[string]any{"database": n.db.Path(), "cluster_id": "cluster-1", "enable_policy_enforcement": false,
		"agent_socket": filepath.Join(n.dir, "agent.sock")}
	b, _ := json.Marshal(doc)
	return b
}

func (l *lab) start(n *node) {
	t := l.t
	t.Helper()
	enc := l.encrypt
	if n.encrypt != nil {
		enc = *n.encrypt
	}
	ctrl, err := nodenet.New(nodenet.Options{
		Client: l.agentC, NodeName: n.name, Namespace: l.ns, ClusterCIDR: l.cidr, DB: n.db,
		ConfListPath: n.confList, BaseConfList: l.baseConfList(n), NetNSPath: nsPath(n.netns),
		Resync: time.Second, Logger: testLogger(t, n.name), Encrypt: enc, KeepSourceTo: l.remote,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.ctrl, n.cancel, n.done = ctrl, cancel, make(chan error, 1)
	go func() { n.done <- ctrl.Run(ctx) }()
	t.Cleanup(func() { l.stop(n) })
	select {
	case <-ctrl.Ready():
	case err := <-n.done:
		t.Fatalf("%s: controller ended: %v", n.name, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no conflist after 30s: %+v", n.name, ctrl.Status())
	}
}

func (l *lab) stop(n *node) {
	if n.cancel == nil {
		return
	}
	n.cancel()
	select {
	case err := <-n.done:
		if err != nil {
			l.t.Errorf("%s: controller: %v", n.name, err)
		}
	case <-time.After(10 * time.Second):
		l.t.Errorf("%s: controller did not stop", n.name)
	}
	n.cancel = nil
}

// addPod creates a pod on n through libcni with the conflist the controller wrote.
func (l *lab) addPod(n *node, name string) *pod {
	t := l.t
	t.Helper()
	list, err := libcni.ConfListFromFile(n.confList)
	if err != nil {
		t.Fatalf("%s conflist: %v", n.name, err)
	}
	p := &pod{name: name, netns: makeNS(t, "p")}
	id := "ctr-" + name + "-" + randHex(6)
	p.rt = &libcni.RuntimeConf{ContainerID: id, NetNS: nsPath(p.netns), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", "uid-" + id}}}
	var res *current.Result
	err = doIn(n.netns, func() error {
		r, err := n.cni.AddNetworkList(context.Background(), list, p.rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		t.Fatalf("ADD %s on %s: %v", name, n.name, err)
	}
	if len(res.IPs) == 0 {
		t.Fatalf("ADD %s: no IP", name)
	}
	p.ip, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	n.pods = append(n.pods, p)
	return p
}

// serveTCP listens on addr:port inside netns and answers each connection with the
// remote address it saw, then closes.
func serveTCP(t *testing.T, netnsName string, addr netip.Addr, port int) {
	t.Helper()
	var ln net.Listener
	err := doIn(netnsName, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(c.RemoteAddr().(*net.TCPAddr).IP.String()))
			c.Close()
		}
	}()
}

// dialTCP connects from netns to addr:port and returns what the server saw as our address.
func dialTCP(netnsName string, addr netip.Addr, port int) (string, error) {
	var got string
	err := doIn(netnsName, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, uint16(port)).String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	return got, err
}

func ping(netnsName string, addr netip.Addr) error {
	out, err := exec.Command("ip", "netns", "exec", netnsName, "ping", "-c", "1", "-W", "2", addr.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", addr, netnsName, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ownedRoutes lists the node's routes with nodenet's protocol as "dst via gw dev".
func ownedRoutes(t *testing.T, n *node) map[string]string {
	t.Helper()
	h := handleIn(t, n.netns)
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: nodenet.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range rs {
		dev := ""
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		out[r.Dst.String()] = fmt.Sprintf("via %s dev %s", r.Gw, dev)
	}
	return out
}

// eventually polls f until it returns nil or d passes.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// fdbEntries lists ptx0's permanent FDB entries with a remote as "mac dst ip".
func fdbEntries(t *testing.T, n *node) []string {
	t.Helper()
	h := handleIn(t, n.netns)
	l, err := h.LinkByName(nodenet.VXLANDevice)
	if err != nil {
		return nil
	}
	ns, err := h.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ns {
		if e.State&netlink.NUD_PERMANENT != 0 && e.IP != nil {
			out = append(out, e.HardwareAddr.String()+" dst "+e.IP.String())
		}
	}
	return out
}

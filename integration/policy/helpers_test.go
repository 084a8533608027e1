// Package policy_test checks NetworkPolicy end to end: a real API server (k8senv), the
// agent in-process enforcing in a node network namespace, pods attached by the real
// patronus-cni through libcni, Services translated by kube-proxy (nftables mode) in the
// node namespace, and real TCP/UDP (and crafted SCTP) probes between pod namespaces —
// among them the 49 scenarios of the upstream NetworkPolicy e2e suite (upstream_test.go),
// for each datapath setting (ebpf, nftables, both).
//
// Kube-proxy: $PATRONUS_KUBE_PROXY, else the lab's build cache, else built with
// scripts/lab/build.sh kube-proxy; PATRONUS_KUBE_PROXY=standin uses an nftables DNAT rule
// per Service instead (logged).
package policy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/patronus/patronus/agent"
	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/policy/netpolcases"
)

var (
	// configMu serialises agent starts: they share the patronus-config ConfigMap.
	configMu sync.Mutex

	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// cniBinDir returns a directory holding patronus-cni (the patronus binary: it acts as
// the plugin when called under that name).
func cniBinDir(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		builtDir, buildErr = os.MkdirTemp("", "pt-polbin-")
		if buildErr != nil {
			return
		}
		dst := filepath.Join(builtDir, "patronus-cni")
		if b := os.Getenv("PATRONUS_BIN"); b != "" {
			data, err := os.ReadFile(b)
			if err != nil {
				buildErr = err
				return
			}
			buildErr = os.WriteFile(dst, data, 0o755)
			return
		}
		root, err := k8senv.ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", dst, ".")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building patronus (set PATRONUS_BIN to skip): %v", buildErr)
	}
	return builtDir
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// syncBuffer collects the audit log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// node is one node: its netns, the agent enforcing there, and the pods attached.
type node struct {
	t      testing.TB
	k      kubernetes.Interface
	name   string
	prefix string // namespace prefix of this run ("<prefix>-x")
	// datapath the ConfigMap names when this node's agent starts
	datapath string
	dir      string
	nsPath   string
	netns    ns.NetNS
	lc       *libcni.CNIConfig
	list     *libcni.NetworkConfigList
	opts     agent.Options
	audit    *syncBuffer

	cancel context.CancelFunc
	done   chan error
	client *localapi.Client

	pods map[string]*pod // "x/a" (logical namespace)

	syncMu   sync.Mutex
	lastSync []enforce.Endpoint // as the agent last passed them to the enforcer
	syncs    uint64             // enforcer Set calls so far
	syncAt   time.Time          // when the last one returned

	svc map[string]netip.Addr // ClusterIP of each pod's Service ("x/a"), once services ran
}

// endpoint returns the endpoint of p as last applied.
func (n *node) endpoint(p *pod) (enforce.Endpoint, bool) {
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	for _, ep := range n.lastSync {
		if ep.Namespace == p.ns && ep.Pod == p.name {
			return ep, true
		}
	}
	return enforce.Endpoint{}, false
}

type pod struct {
	lns, name string // logical namespace ("x") and name
	ns        string // real namespace
	ip        netip.Addr
	netns     ns.NetNS
	rt        *libcni.RuntimeConf
}

func (p *pod) String() string { return p.lns + "/" + p.name }

// newNode makes a node namespace and starts the agent for it; mods adjust the agent's
// options (benchmarks).
func newNode(t testing.TB, c *k8senv.Cluster, datapath string, mods ...func(*agent.Options)) *node {
	t.Helper()
	enforcetest.RequireRoot(t)
	id := randHex(3)
	dir, err := os.MkdirTemp("", "pt-pol-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &node{t: t, k: c.Client(), name: "node-" + datapath, datapath: datapath, prefix: datapath, dir: dir, audit: &syncBuffer{}, pods: map[string]*pod{}}
	nodeName := "pt-ip-" + id + "-node"
	n.netns = enforcetest.NewNS(t, nodeName)
	n.nsPath = filepath.Join("/var/run/netns", nodeName)
	// The node's setup, as kubeadm requires for kube-proxy: bridged traffic through
	// netfilter (hairpin Service traffic), loopback up.
	if err := n.netns.Do(func(ns.NetNS) error {
		for _, k := range []string{"net/bridge/bridge-nf-call-iptables", "net/ipv4/ip_forward"} {
			if err := os.WriteFile("/proc/sys/"+k, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return exec.Command("ip", "link", "set", "lo", "up").Run()
	}); err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(dir, "agent.sock")
	conflist := map[string]any{"cniVersion": "1.1.0", "name": "patronus-k8s", "plugins": []any{map[string]any{
		"type": "patronus-cni", "bridge": "cni-bridge0",
		"ipam": map[string]any{"type": "host-local", "subnet": "10.244.0.0/16", "rangeStart": "10.244.1.10",
			"rangeEnd": "10.244.254.254", "gateway": "10.244.0.1", "dataDir": filepath.Join(dir, "ipam"),
			"routes": []any{map[string]any{"dst": "0.0.0.0/0"}}},
		"sdwan": map[string]any{"database": filepath.Join(dir, "k8s-sdwan.db"), "cluster_id": "test-cluster",
			"enable_policy_enforcement": true, "agent_socket": sock},
	}}}
	raw, _ := json.Marshal(conflist)
	if err := os.WriteFile(filepath.Join(dir, "10-patronus.conflist"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if n.list, err = libcni.NetworkConfFromBytes(raw); err != nil {
		t.Fatal(err)
	}
	n.lc = libcni.NewCNIConfigWithCacheDir([]string{cniBinDir(t)}, filepath.Join(dir, "cache"), nil)
	n.opts = agent.Options{
		RESTConfig: c.RESTConfig(), NodeName: n.name, ClusterID: "test-cluster",
		DatabasePath: filepath.Join(dir, "k8s-sdwan.db"), SocketPath: sock,
		ConflistPath: filepath.Join(dir, "10-patronus.conflist"), MetricsAddr: "off",
		StorePollInterval: 100 * time.Millisecond, MCSRetryInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Policy: &agent.PolicyOptions{BPFFS: enforcetest.BPFFS(t), NetNS: n.nsPath, AuditOut: n.audit,
			CounterInterval: 200 * time.Millisecond,
			OnSync: func(eps []enforce.Endpoint, _ error) {
				n.syncMu.Lock()
				n.lastSync = eps
				n.syncs++
				n.syncAt = time.Now()
				n.syncMu.Unlock()
			}},
	}
	for _, m := range mods {
		m(&n.opts)
	}
	n.start()
	t.Cleanup(func() { n.stop() })
	return n
}

// start runs the agent in-process (a fresh metrics registry each time) until ready.
func (n *node) start() {
	t := n.t
	t.Helper()
	// The ConfigMap chooses the datapath (and gives the Service CIDR the eBPF egress check
	// defers to after DNAT). The agent reads it when it starts; nodes of other datapaths
	// share the API server and may start at the same time, so each start holds the lock
	// from writing the ConfigMap until its agent is ready.
	configMu.Lock()
	defer configMu.Unlock()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "patronus-config"},
		Data: map[string]string{"datapath": n.datapath, "service-cidr": k8senv.DefaultServiceCIDR, "cluster-cidr": "10.244.0.0/16"}}
	if _, err := n.k.CoreV1().ConfigMaps("kube-system").Update(context.Background(), cm, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
		if _, err = n.k.CoreV1().ConfigMaps("kube-system").Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	n.opts.Registry = prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done, n.client = cancel, make(chan error, 1), localapi.NewClient(n.opts.SocketPath)
	opts := n.opts
	go func() { n.done <- agent.Run(ctx, opts) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-n.done:
			t.Fatalf("agent exited: %v", err)
		default:
		}
		if n.client.Ready(context.Background()) == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("agent not ready within 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop cancels the agent (as SIGTERM or a kill of the DaemonSet pod would) and waits.
func (n *node) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	select {
	case err := <-n.done:
		if err != nil {
			n.t.Errorf("agent stopped with %v", err)
		}
	case <-time.After(30 * time.Second):
		n.t.Error("agent did not stop within 30s")
	}
	n.cancel = nil
}

func (n *node) inNode(f func() error) error { return n.netns.Do(func(ns.NetNS) error { return f() }) }

// namespace creates namespace "<prefix>-<lns>" with label ns=<lns>.
func (n *node) namespace(lns string) {
	n.t.Helper()
	_, err := n.k.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: n.prefix + "-" + lns, Labels: map[string]string{"ns": lns}}}, metav1.CreateOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
}

// addPod creates the API object (bound to this node, labelled pod=<name>, with the
// upstream harness's named ports serve-<80|81>-<tcp|udp|sctp>), then attaches it through
// CNI ADD, then serves TCP and UDP on 80 and 81 (SCTP is observed with a packet socket).
func (n *node) addPod(lns, name string, serveBeforeAdd bool) *pod {
	t := n.t
	t.Helper()
	p := &pod{lns: lns, name: name, ns: n.prefix + "-" + lns}
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: name, Labels: map[string]string{"pod": name}},
		Spec: corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "c", Image: "agnhost",
			Ports: netpolcases.ContainerPorts()}}}}
	created, err := n.k.CoreV1().Pods(p.ns).Create(context.Background(), obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsName := "pt-ip-" + randHex(3) + "-" + name
	p.netns = enforcetest.NewNS(t, nsName)
	_ = p.netns.Do(func(ns.NetNS) error { return exec.Command("ip", "link", "set", "lo", "up").Run() })
	if serveBeforeAdd {
		p.serve(t)
	}
	p.rt = &libcni.RuntimeConf{ContainerID: "ctr-" + randHex(6), NetNS: filepath.Join("/var/run/netns", nsName), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.ns}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", string(created.UID)}}}
	var res *current.Result
	if err := n.inNode(func() error {
		r, err := n.lc.AddNetworkList(context.Background(), n.list, p.rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	}); err != nil {
		t.Fatalf("CNI ADD %s: %v", p, err)
	}
	t.Cleanup(func() { _ = n.inNode(func() error { return n.lc.DelNetworkList(context.Background(), n.list, p.rt) }) })
	p.ip = netip.MustParseAddr(res.IPs[0].Address.IP.String())
	if !serveBeforeAdd {
		p.serve(t)
	}
	n.pods[p.String()] = p
	return p
}

// serve runs TCP and UDP echo servers on 80 and 81 (all addresses).
func (p *pod) serve(t testing.TB) {
	t.Helper()
	err := p.netns.Do(func(ns.NetNS) error {
		for _, port := range []string{"80", "81"} {
			if err := serveUDP(t, port); err != nil {
				return err
			}
			l, err := net.Listen("tcp4", ":"+port)
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
				}
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("serve in %s: %v", p, err)
	}
}

// serveUDP runs a UDP echo server on port in the calling thread's namespace.
func serveUDP(t testing.TB, port string) error {
	u, err := net.ListenPacket("udp4", ":"+port)
	if err != nil {
		return err
	}
	t.Cleanup(func() { u.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			m, a, err := u.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = u.WriteTo(buf[:m], a)
		}
	}()
	return nil
}

// dial opens a TCP connection from the pod's namespace.
func (p *pod) dial(to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := p.netns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp4", to.String(), timeout)
		return err
	})
	return c, err
}

// probe reports whether proto traffic from p reaches to:port and is echoed back.
func (p *pod) probe(proto string, to netip.AddrPort, timeout time.Duration) bool {
	if proto == "tcp" {
		c, err := p.dial(to, timeout)
		if err != nil {
			return false
		}
		defer c.Close()
		return echo(c, timeout)
	}
	var c net.Conn
	if err := p.netns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.Dial("udp4", to.String())
		return err
	}); err != nil {
		return false
	}
	defer c.Close()
	return echo(c, timeout)
}

func echo(c net.Conn, timeout time.Duration) bool {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	buf := make([]byte, 4)
	_, err := io.ReadFull(c, buf)
	return err == nil && string(buf) == "ping"
}

// want says whether traffic from one pod to another is expected to pass.
type want func(from, to *pod) bool

func allAllowed(_, _ *pod) bool { return true }

// expect probes every ordered pair of pods (not a pod to itself) on proto/port in
// parallel until the verdicts match want (enforcement follows the API within the
// timeout), and reports the mismatches of the last round. Expected denials use a short
// timeout; expected passes a longer one.
func (n *node) expect(stage, proto string, port uint16, w want) {
	t := n.t
	t.Helper()
	type res struct {
		from, to *pod
		want     bool
		got      bool
	}
	deadline := time.Now().Add(20 * time.Second)
	for round := 0; ; round++ {
		var (
			mu  sync.Mutex
			wg  sync.WaitGroup
			bad []res
		)
		for _, from := range n.pods {
			for _, to := range n.pods {
				if from == to {
					continue
				}
				wg.Go(func() {
					exp := w(from, to)
					timeout := 300 * time.Millisecond
					if exp {
						timeout = 2 * time.Second
					}
					got := from.probe(proto, netip.AddrPortFrom(to.ip, port), timeout)
					if got != exp {
						mu.Lock()
						bad = append(bad, res{from, to, exp, got})
						mu.Unlock()
					}
				})
			}
		}
		wg.Wait()
		if len(bad) == 0 {
			t.Logf("%s: %s/%d matrix as expected (round %d)", stage, proto, port, round)
			return
		}
		if time.Now().After(deadline) {
			var lines []string
			for _, b := range bad {
				lines = append(lines, fmt.Sprintf("%s -> %s: want %v, got %v", b.from, b.to, b.want, b.got))
			}
			t.Errorf("%s: %s/%d: %d mismatches:\n%s", stage, proto, port, len(bad), strings.Join(lines, "\n"))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// apply creates or updates a NetworkPolicy in logical namespace lns.
func (n *node) apply(lns string, np *networkingv1.NetworkPolicy) {
	n.t.Helper()
	np.Namespace = n.prefix + "-" + lns
	c := n.k.NetworkingV1().NetworkPolicies(np.Namespace)
	old, err := c.Get(context.Background(), np.Name, metav1.GetOptions{})
	if err == nil {
		np.ResourceVersion = old.ResourceVersion
		_, err = c.Update(context.Background(), np, metav1.UpdateOptions{})
	} else if apierrors.IsNotFound(err) {
		_, err = c.Create(context.Background(), np, metav1.CreateOptions{})
	}
	if err != nil {
		n.t.Fatalf("apply NetworkPolicy %s/%s: %v", np.Namespace, np.Name, err)
	}
}

func (n *node) deletePolicy(lns, name string) {
	n.t.Helper()
	if err := n.k.NetworkingV1().NetworkPolicies(n.prefix+"-"+lns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		n.t.Fatal(err)
	}
}

// relabelPod and relabelNamespace merge labels (a nil value removes the label).
func (n *node) relabelPod(p *pod, labels map[string]*string) {
	n.t.Helper()
	n.patch(func(ctx context.Context, b []byte) error {
		_, err := n.k.CoreV1().Pods(p.ns).Patch(ctx, p.name, "application/merge-patch+json", b, metav1.PatchOptions{})
		return err
	}, labels)
}

func (n *node) relabelNamespace(lns string, labels map[string]*string) {
	n.t.Helper()
	n.patch(func(ctx context.Context, b []byte) error {
		_, err := n.k.CoreV1().Namespaces().Patch(ctx, n.prefix+"-"+lns, "application/merge-patch+json", b, metav1.PatchOptions{})
		return err
	}, labels)
}

func (n *node) patch(do func(context.Context, []byte) error, labels map[string]*string) {
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if err := do(context.Background(), b); err != nil {
		n.t.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }

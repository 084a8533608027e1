package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/patronus/patronus/agent"
	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
	"github.com/prometheus/client_golang/prometheus"
)

// Per-node pod networking run by the agent (agent.Options.NodeNet, `patronus agent
// --manage-conflist`): each agent does its netlink and nftables work in its own node
// namespace; the nodes share an underlay bridge in a namespace of the test.

// inNS runs f on a thread in the namespace at path.
func inNS(path string, f func() error) error {
	n, err := ns.GetNS(path)
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error { return f() })
}

func handleAt(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	nsh, err := netns.GetFromPath(path)
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

func setConfigMap(t *testing.T, k kubernetes.Interface, data map[string]string) {
	t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: config.ConfigMapName, Namespace: config.ConfigMapNamespace}, Data: data}
	if _, err := k.CoreV1().ConfigMaps(config.ConfigMapNamespace).Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createNode creates the Node object with an InternalIP (invalid addr: none) and no podCIDR.
func createNode(t *testing.T, k kubernetes.Interface, name string, addr netip.Addr) {
	t.Helper()
	ctx := context.Background()
	n, err := k.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if addr.IsValid() {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr.String()}}
		if _, err := k.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// startAgentAsync starts agent.Run without waiting for readiness.
func startAgentAsync(t *testing.T, opts agent.Options) *runningAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{cancel: cancel, done: make(chan error, 1), client: localapi.NewClient(opts.SocketPath), opts: opts}
	go func() { ra.done <- agent.Run(ctx, opts) }()
	t.Cleanup(func() { ra.stop(t) })
	return ra
}

// conflistIPAM reads the patronus-cni entry's ipam subnet and gateway and sdwan.cluster_id.
func conflistIPAM(t *testing.T, path string) (subnet, gateway, clusterID string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("conflist: %v", err)
	}
	var doc struct {
		Plugins []struct {
			Type string `json:"type"`
			IPAM struct {
				Subnet  string `json:"subnet"`
				Gateway string `json:"gateway"`
			} `json:"ipam"`
			SDWAN struct {
				ClusterID string `json:"cluster_id"`
			} `json:"sdwan"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("conflist %s: %v", path, err)
	}
	for _, p := range doc.Plugins {
		if p.Type == "patronus-cni" {
			return p.IPAM.Subnet, p.IPAM.Gateway, p.SDWAN.ClusterID
		}
	}
	t.Fatalf("conflist %s has no patronus-cni entry: %s", path, b)
	return
}

// The agent's /readyz (socket and TCP) fails while the node's conflist is not written
// (here: its Node object does not exist yet, so nodenet cannot decide the block), and the
// DaemonSet's init step wrote none (install-cni --no-conflist). Once the Node exists the
// agent writes the conflist itself (the block claimed from cluster-cidr, or the
// single-node default when there is no cluster-cidr) with the running cluster id, and
// becomes ready.
func TestNodeNetReadyWaitsForConflist(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the agent's nodenet works in a network namespace of the test (CI runs it as root)")
	}
	for _, tc := range []struct {
		name        string
		clusterCIDR string
		wantSource  string
	}{
		{name: "lease block", clusterCIDR: "10.250.0.0/16", wantSource: "lease"},
		{name: "single node default", clusterCIDR: "", wantSource: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := k8senv.Start(t)
			k := c.Client()
			data := map[string]string{"cluster-id": "test-cluster"}
			if tc.clusterCIDR != "" {
				data["cluster-cidr"] = tc.clusterCIDR
			}
			setConfigMap(t, k, data)
			dir := nodeDir(t)
			opts := baseOptions(t, c, dir)
			opts.ConflistPath = filepath.Join(dir, "net.d", "10-patronus.conflist")
			opts.NodeNet = &agent.NodeNetOptions{NetNSPath: makeNetns(t, "rdy"), Resync: 500 * time.Millisecond}
			ra := startAgentAsync(t, opts)

			waitFor(t, 60*time.Second, "agent waiting for its conflist", func() error {
				s, err := ra.client.Status(context.Background())
				if err != nil {
					return err
				}
				if s.Ready || !strings.Contains(s.NotReadyReason, "conflist") {
					return fmt.Errorf("ready=%v reason %q", s.Ready, s.NotReadyReason)
				}
				return nil
			})
			// Not ready, on both listeners, for as long as the Node is missing.
			for range 3 {
				err := ra.client.Ready(context.Background())
				var se *localapi.StatusError
				if !errors.As(err, &se) || se.Code != 503 || !strings.Contains(se.Body, "conflist") {
					t.Fatalf("socket /readyz without a conflist: %v", err)
				}
				s, _ := ra.client.Status(context.Background())
				if body := httpGetCode(t, "http://"+s.MetricsAddr+"/readyz", 503); !strings.Contains(body, "conflist") {
					t.Fatalf("TCP /readyz body %q", body)
				}
				if _, err := os.Stat(opts.ConflistPath); !os.IsNotExist(err) {
					t.Fatalf("conflist exists before the node's block is known: %v", err)
				}
				time.Sleep(500 * time.Millisecond)
			}

			createNode(t, k, node, netip.Addr{})
			waitFor(t, 30*time.Second, "agent ready", func() error { return ra.client.Ready(context.Background()) })
			subnet, gw, id := conflistIPAM(t, opts.ConflistPath)
			if id != "test-cluster" {
				t.Errorf("conflist cluster_id %q, want the running cluster id test-cluster", id)
			}
			var nn localapi.NodeNet
			if err := ra.client.Do(context.Background(), "GET", localapi.PathNodeNet, &nn); err != nil {
				t.Fatal(err)
			}
			if tc.clusterCIDR == "" {
				if subnet != "10.244.0.0/16" || nn.Block != "" || nn.Source != "" {
					t.Fatalf("single node: conflist subnet %s, nodenet %+v; want the embedded default", subnet, nn)
				}
				return
			}
			b, err := netip.ParsePrefix(subnet)
			if err != nil || b.Bits() != 24 || !netip.MustParsePrefix(tc.clusterCIDR).Contains(b.Addr()) ||
				gw != b.Addr().Next().String() || nn.Block != subnet || nn.Source != tc.wantSource {
				t.Fatalf("conflist subnet %s gateway %s, nodenet %+v: want a /24 of %s from a lease", subnet, gw, nn, tc.clusterCIDR)
			}

			// A restart keeps the block (node database) and leaves the conflist as it is.
			before, err := os.ReadFile(opts.ConflistPath)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := os.Stat(opts.ConflistPath)
			if err := ra.stop(t); err != nil {
				t.Fatalf("agent stopped with %v", err)
			}
			opts.Registry = prometheus.NewRegistry()
			ra = startAgent(t, opts)
			after, _ := os.ReadFile(opts.ConflistPath)
			st2, _ := os.Stat(opts.ConflistPath)
			if string(after) != string(before) || !st2.ModTime().Equal(st.ModTime()) {
				t.Fatalf("restart rewrote the conflist:\n%s\nwas:\n%s", after, before)
			}
			if err := ra.client.Do(context.Background(), "GET", localapi.PathNodeNet, &nn); err != nil || nn.Block != subnet {
				t.Fatalf("after restart: nodenet %+v %v, want block %s", nn, err, subnet)
			}
		})
	}
}

// httpGetCode GETs url and checks the status code.
func httpGetCode(t *testing.T, url string, code int) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != code {
		t.Fatalf("GET %s: %d %s, want %d", url, resp.StatusCode, b, code)
	}
	return string(b)
}

// nnNode is one node of the multi-node test: a namespace on the underlay and an agent.
type nnNode struct {
	name   string
	netns  string // path
	addr   netip.Addr
	dir    string
	cniBin string
	opts   agent.Options
	ra     *runningAgent
	lc     *libcni.CNIConfig
	block  netip.Prefix
}

type nnPod struct {
	netns string // path
	ip    netip.Addr
	node  string
}

// Three agents, each claiming a block of cluster-cidr for its node (Nodes without a
// podCIDR), write their node's conflist; pods created through the real plugin on
// different nodes reach each other over ICMP and TCP with their real addresses (no
// masquerade between pods); `patronus status` on a node shows its block.
func TestNodeNetAcrossNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, a bridge, veths and routes (CI runs it as root)")
	}
	bin := patronusBin(t)
	c := k8senv.Start(t)
	k := c.Client()
	cidr := netip.MustParsePrefix("10.244.0.0/16")
	setConfigMap(t, k, map[string]string{"cluster-id": "test-cluster", "cluster-cidr": cidr.String(), "node-block-size": "24"})

	under := makeNetns(t, "und")
	uh := handleAt(t, under)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := uh.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := uh.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	plugin, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}

	// addNode makes node name (underlay address .11+i) with its Node object; no agent yet.
	addNode := func(name string, i int) *nnNode {
		n := &nnNode{name: name, netns: makeNetns(t, "nd"), addr: netip.AddrFrom4([4]byte{192, 168, 79, byte(11 + i)}), dir: nodeDir(t)}
		h := handleAt(t, n.netns)
		unsh, err := netns.GetFromPath(under)
		if err != nil {
			t.Fatal(err)
		}
		peer := fmt.Sprintf("u%s%d", name[len(name)-1:], time.Now().UnixNano()%100000)
		err = h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: peer, PeerNamespace: netlink.NsFd(int(unsh))})
		unsh.Close()
		if err != nil {
			t.Fatalf("veth: %v", err)
		}
		pl, err := uh.LinkByName(peer)
		if err != nil {
			t.Fatal(err)
		}
		if err := uh.LinkSetMaster(pl, br); err != nil {
			t.Fatal(err)
		}
		if err := uh.LinkSetUp(pl); err != nil {
			t.Fatal(err)
		}
		eth, _ := h.LinkByName("eth0")
		if err := h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: n.addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		for _, l := range []string{"eth0", "lo"} {
			x, _ := h.LinkByName(l)
			if err := h.LinkSetUp(x); err != nil {
				t.Fatal(err)
			}
		}
		if err := inNS(n.netns, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }); err != nil {
			t.Fatal(err)
		}
		n.cniBin = filepath.Join(n.dir, "bin")
		if err := os.MkdirAll(n.cniBin, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(n.cniBin, "patronus-cni"), plugin, 0o755); err != nil {
			t.Fatal(err)
		}
		n.lc = libcni.NewCNIConfigWithCacheDir([]string{n.cniBin}, filepath.Join(n.dir, "cache"), nil)

		n.opts = baseOptions(t, c, n.dir)
		n.opts.NodeName = name
		n.opts.Logger = testLogger(t).With("node", name)
		n.opts.ConflistPath = filepath.Join(n.dir, "net.d", "10-patronus.conflist")
		n.opts.NodeNet = &agent.NodeNetOptions{NetNSPath: n.netns, Resync: time.Second}
		// What `install-cni --conflist` would have installed: this node's own database,
		// socket and IPAM directory (a real node uses the defaults), the seed's /16 range,
		// no policy enforcement (this test is about addresses and routes).
		base := map[string]any{"cniVersion": "1.0.0", "name": "patronus-k8s", "plugins": []any{map[string]any{
			"type": "patronus-cni", "bridge": "cni-bridge0",
			"ipam": map[string]any{"type": "host-local", "subnet": "10.244.0.0/16", "dataDir": filepath.Join(n.dir, "ipam"),
				"routes": []any{map[string]any{"dst": "0.0.0.0/0"}}},
			"sdwan": map[string]any{"database": n.opts.DatabasePath, "cluster_id": "test-cluster",
				"enable_policy_enforcement": false, "agent_socket": n.opts.SocketPath},
		}}}
		raw, _ := json.Marshal(base)
		os.MkdirAll(filepath.Dir(n.opts.ConflistPath), 0o755)
		if err := os.WriteFile(n.opts.ConflistPath, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		createNode(t, k, name, n.addr)
		return n
	}
	var nodes []*nnNode
	for i, name := range []string{"nn-a", "nn-b", "nn-c"} {
		nodes = append(nodes, addNode(name, i))
	}
	// Started together: the claims race through the API server.
	for _, n := range nodes {
		n.ra = startAgentAsync(t, n.opts)
	}
	seen := map[netip.Prefix]string{}
	for _, n := range nodes {
		waitFor(t, 60*time.Second, n.name+" ready", func() error { return n.ra.client.Ready(context.Background()) })
		subnet, gw, _ := conflistIPAM(t, n.opts.ConflistPath)
		b, err := netip.ParsePrefix(subnet)
		if err != nil || b.Bits() != 24 || !cidr.Contains(b.Addr()) || gw != b.Addr().Next().String() {
			t.Fatalf("%s: conflist subnet %q gateway %q: want a /24 of %s and its first address", n.name, subnet, gw, cidr)
		}
		if other, dup := seen[b]; dup {
			t.Fatalf("%s and %s both have block %s", n.name, other, b)
		}
		seen[b] = n.name
		n.block = b
	}
	// Every node routes the two other blocks.
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" routes", func() error {
			var nn localapi.NodeNet
			if err := n.ra.client.Do(context.Background(), "GET", localapi.PathNodeNet, &nn); err != nil {
				return err
			}
			if nn.Block != n.block.String() || nn.Source != "lease" || nn.Peers != 2 || nn.LastError != "" {
				return fmt.Errorf("nodenet %+v", nn)
			}
			h := handleAt(t, n.netns)
			for _, p := range nodes {
				if p == n {
					continue
				}
				rs, err := h.RouteGet(p.block.Addr().Next().AsSlice())
				if err != nil || len(rs) == 0 || rs[0].Gw == nil || rs[0].Gw.String() != p.addr.String() {
					return fmt.Errorf("route to %s's block %s: %+v %v", p.name, p.block, rs, err)
				}
			}
			return nil
		})
	}

	// A pod per node through the real plugin with the conflist the agent wrote.
	addPod := func(n *nnNode) nnPod {
		t.Helper()
		list, err := libcni.ConfListFromFile(n.opts.ConflistPath)
		if err != nil {
			t.Fatal(err)
		}
		rt := &libcni.RuntimeConf{ContainerID: "ctr-" + n.name, NetNS: makeNetns(t, "pod"), IfName: "eth0",
			Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "p-" + n.name}, {"K8S_POD_UID", "uid-" + n.name}}}
		var res *current.Result
		if err := inNS(n.netns, func() error {
			r, err := n.lc.AddNetworkList(context.Background(), list, rt)
			if err != nil {
				return err
			}
			res, err = current.NewResultFromResult(r)
			return err
		}); err != nil {
			t.Fatalf("ADD on %s: %v", n.name, err)
		}
		t.Cleanup(func() { inNS(n.netns, func() error { return n.lc.DelNetworkList(context.Background(), list, rt) }) })
		if len(res.IPs) == 0 {
			t.Fatalf("ADD on %s: no IP", n.name)
		}
		ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
		if !n.block.Contains(ip) {
			t.Fatalf("pod on %s got %s outside the node's block %s", n.name, ip, n.block)
		}
		serveEcho(t, rt.NetNS, ip, 8080)
		return nnPod{netns: rt.NetNS, ip: ip, node: n.name}
	}
	// reach checks ICMP and TCP from one pod to another, with the real source address.
	reach := func(from, to nnPod) {
		t.Helper()
		what := fmt.Sprintf("pod %s (%s) -> pod %s (%s)", from.ip, from.node, to.ip, to.node)
		waitFor(t, 15*time.Second, "ICMP "+what, func() error {
			out, err := exec.Command("ip", "netns", "exec", filepath.Base(from.netns), "ping", "-c", "1", "-W", "1", to.ip.String()).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		got, err := dialEcho(from.netns, to.ip, 8080)
		if err != nil {
			t.Fatalf("TCP %s: %v", what, err)
		}
		if got != from.ip.String() {
			t.Fatalf("TCP %s: the server saw %s, want the pod's own address (pod-to-pod is never masqueraded)", what, got)
		}
	}
	var pods []nnPod
	for _, n := range nodes {
		pods = append(pods, addPod(n))
	}
	for i, from := range pods {
		for j, to := range pods {
			if i != j {
				reach(from, to)
			}
		}
	}

	// `patronus status` on node a shows its block.
	a := nodes[0]
	out, _ := exec.Command("ip", "netns", "exec", filepath.Base(a.netns), bin, "status", "--socket", a.opts.SocketPath,
		"--cni-bin-dir", a.cniBin).CombinedOutput()
	want := fmt.Sprintf("Pod block: %s (from lease), conflist %s, 2 peer nodes routed", a.block, a.opts.ConflistPath)
	if !strings.Contains(string(out), want) {
		t.Fatalf("patronus status lacks %q:\n%s", want, out)
	}
	t.Logf("patronus status on %s:\n%s", a.name, out)

	// A fourth node joins, its agent the real binary as the DaemonSet runs it
	// (`patronus agent --manage-conflist`, in the node's namespace as its host network):
	// it claims a block of its own, the three others route to it, and pods reach each
	// other both ways.
	d := addNode("nn-d", 3)
	relayAPI(t, d.netns, c.Host())
	args := []string{"netns", "exec", filepath.Base(d.netns), bin, "agent", "--manage-conflist",
		"--kubeconfig", c.Kubeconfig(), "--database", d.opts.DatabasePath, "--socket", d.opts.SocketPath,
		"--cni-conflist", d.opts.ConflistPath, "--metrics-addr", "off", "--enforce-policy=false", "--mesh=false",
		"--paths=false", "--log-format", "text"}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), "NODE_NAME="+d.name, "CLUSTER_ID=test-cluster")
	var dout safeBuffer
	cmd.Stdout, cmd.Stderr = &dout, &dout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("nn-d agent output:\n%s", dout.String())
		}
	})
	d.ra = &runningAgent{client: localapi.NewClient(d.opts.SocketPath)}
	waitFor(t, 60*time.Second, "nn-d (binary) ready", func() error {
		select {
		case err := <-exited:
			exited <- err
			return errPermanent{fmt.Errorf("agent exited: %v", err)}
		default:
		}
		return d.ra.client.Ready(context.Background())
	})
	subnet, _, _ := conflistIPAM(t, d.opts.ConflistPath)
	d.block, err = netip.ParsePrefix(subnet)
	if err != nil || !cidr.Contains(d.block.Addr()) || seen[d.block] != "" {
		t.Fatalf("nn-d: conflist subnet %q (blocks already held: %v)", subnet, seen)
	}
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" routes nn-d's block", func() error {
			var nn localapi.NodeNet
			if err := n.ra.client.Do(context.Background(), "GET", localapi.PathNodeNet, &nn); err != nil {
				return err
			}
			if nn.Peers != 3 {
				return fmt.Errorf("nodenet %+v", nn)
			}
			return nil
		})
	}
	pd := addPod(d)
	reach(pods[0], pd)
	reach(pd, pods[2])
}

// serveEcho answers each TCP connection on addr:port inside the namespace with the
// remote address it saw.
func serveEcho(t *testing.T, nsPath string, addr netip.Addr, port int) {
	t.Helper()
	serveTCP(t, nsPath, addr, port, func(c net.Conn) string { return c.RemoteAddr().(*net.TCPAddr).IP.String() })
}

// serveTCP answers each TCP connection on addr:port inside the namespace at nsPath with
// answer(conn), then closes it.
func serveTCP(t *testing.T, nsPath string, addr netip.Addr, port int, answer func(net.Conn) string) {
	t.Helper()
	var ln net.Listener
	if err := inNS(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(answer(c)))
			c.Close()
		}
	}()
}

func dialEcho(nsPath string, addr netip.Addr, port int) (string, error) {
	var got string
	err := inNS(nsPath, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, uint16(port)).String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	return got, err
}

// relayAPI makes the API server (host URL on the root namespace's loopback) reachable at
// the same address inside the namespace at nsPath: the listener is created there, each
// connection is relayed from the root namespace.
func relayAPI(t *testing.T, nsPath, host string) {
	t.Helper()
	u, err := url.Parse(host)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := inNS(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp", u.Host)
		return err
	}); err != nil {
		t.Fatalf("API relay: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer down.Close()
				up, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() { io.Copy(up, down); up.(*net.TCPConn).CloseWrite(); close(done) }()
				io.Copy(down, up)
				down.(*net.TCPConn).CloseWrite()
				<-done
			}()
		}
	}()
}

// The route and masquerade switches: ConfigMap masquerade=false routes the peer's block
// and installs no masquerade chain; NoRoutes (--node-routes=false) with the Masquerade
// override (--masquerade) routes nothing and masquerades. The conflist is written in both.
func TestNodeNetRoutesAndMasqueradeSwitches(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the agent's nodenet works in a network namespace of the test (CI runs it as root)")
	}
	on := true
	for _, tc := range []struct {
		name      string
		masqKey   string
		opts      agent.NodeNetOptions
		wantRoute bool
		wantMasq  bool
	}{
		{name: "ConfigMap masquerade false", masqKey: "false", wantRoute: true, wantMasq: false},
		{name: "no routes, masquerade flag", masqKey: "false", opts: agent.NodeNetOptions{NoRoutes: true, Masquerade: &on}, wantRoute: false, wantMasq: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := k8senv.Start(t)
			k := c.Client()
			setConfigMap(t, k, map[string]string{"cluster-id": "test-cluster", "cluster-cidr": "10.244.0.0/16", "masquerade": tc.masqKey})
			nsPath := makeNetns(t, "sw")
			h := handleAt(t, nsPath)
			// The underlay: a veth pair inside the namespace (this kernel has no dummy links).
			eth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}
			if err := h.LinkAdd(eth); err != nil {
				t.Fatal(err)
			}
			if pl, err := h.LinkByName("eth0p"); err != nil || h.LinkSetUp(pl) != nil {
				t.Fatalf("veth peer: %v", err)
			}
			if err := h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 168, 80, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(eth); err != nil {
				t.Fatal(err)
			}
			createNode(t, k, node, netip.MustParseAddr("192.168.80.1"))
			// A peer with a podCIDR of its own on the same subnet.
			createNode(t, k, "peer", netip.MustParseAddr("192.168.80.2"))
			p, err := k.CoreV1().Nodes().Get(context.Background(), "peer", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p.Spec.PodCIDR, p.Spec.PodCIDRs = "10.244.200.0/24", []string{"10.244.200.0/24"}
			if _, err := k.CoreV1().Nodes().Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}

			dir := nodeDir(t)
			opts := baseOptions(t, c, dir)
			opts.ConflistPath = filepath.Join(dir, "net.d", "10-patronus.conflist")
			nno := tc.opts
			nno.NetNSPath, nno.Resync = nsPath, 500*time.Millisecond
			opts.NodeNet = &nno
			ra := startAgent(t, opts)
			if _, err := os.Stat(opts.ConflistPath); err != nil {
				t.Fatalf("ready without a conflist: %v", err)
			}
			waitFor(t, 20*time.Second, "peer known", func() error {
				var nn localapi.NodeNet
				if err := ra.client.Do(context.Background(), "GET", localapi.PathNodeNet, &nn); err != nil {
					return err
				}
				if nn.Peers != 1 || nn.Block == "" {
					return fmt.Errorf("nodenet %+v", nn)
				}
				return nil
			})
			// Two resyncs later the datapath is as it will stay.
			time.Sleep(1500 * time.Millisecond)
			rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: 78}, netlink.RT_FILTER_PROTOCOL)
			if err != nil {
				t.Fatal(err)
			}
			routed := false
			for _, r := range rs {
				if r.Dst != nil && r.Dst.String() == "10.244.200.0/24" && r.Gw.String() == "192.168.80.2" {
					routed = true
				}
			}
			if routed != tc.wantRoute {
				t.Errorf("route to the peer's block: %v, want %v (proto 78 routes: %v)", routed, tc.wantRoute, rs)
			}
			nsf, err := netns.GetFromPath(nsPath)
			if err != nil {
				t.Fatal(err)
			}
			defer nsf.Close()
			nc, err := nftables.New(nftables.WithNetNSFd(int(nsf)))
			if err != nil {
				t.Fatal(err)
			}
			chains, err := nc.ListChainsOfTableFamily(nftables.TableFamilyINet)
			if err != nil {
				t.Fatal(err)
			}
			masq := false
			for _, ch := range chains {
				if ch.Table.Name == "patronus" && ch.Name == "nodenet-masq" {
					masq = true
				}
			}
			if masq != tc.wantMasq {
				t.Errorf("masquerade chain present: %v, want %v", masq, tc.wantMasq)
			}
		})
	}
}

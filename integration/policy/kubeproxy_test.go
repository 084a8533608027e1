package policy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/policy/netpolcases"
)

// kubeProxyBin finds the kube-proxy binary the Service probes go through:
// $PATRONUS_KUBE_PROXY (a path, or "standin" for the nftables DNAT stand-in), else the lab's
// build cache, else it builds it with scripts/lab/build.sh kube-proxy (cached in the same
// place; minutes the first time). It returns "" and the reason when the stand-in is used.
func kubeProxyBin(t testing.TB) (bin, standinReason string) {
	t.Helper()
	switch b := os.Getenv("PATRONUS_KUBE_PROXY"); b {
	case "standin":
		return "", "PATRONUS_KUBE_PROXY=standin"
	case "":
	default:
		return b, ""
	}
	kubeProxyOnce.Do(func() {
		home, _ := os.UserHomeDir()
		cache := os.Getenv("PATRONUS_CACHE")
		if cache == "" {
			if cache = os.Getenv("XDG_CACHE_HOME"); cache == "" {
				cache = filepath.Join(home, ".cache")
			}
			cache = filepath.Join(cache, "patronus")
		}
		if m, _ := filepath.Glob(filepath.Join(cache, "lab", "bin-*", "kube-proxy")); len(m) > 0 {
			kubeProxyPath = m[len(m)-1]
			return
		}
		root, err := k8senv.ModuleRoot()
		if err != nil {
			kubeProxyErr = err
			return
		}
		t.Log("building kube-proxy with scripts/lab/build.sh kube-proxy (cached afterwards; PATRONUS_KUBE_PROXY=standin to use an nftables DNAT stand-in instead)")
		cmd := exec.Command(filepath.Join(root, "scripts", "lab", "build.sh"), "kube-proxy")
		cmd.Dir = root
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			kubeProxyErr = fmt.Errorf("scripts/lab/build.sh kube-proxy: %w", err)
			return
		}
		kubeProxyPath = filepath.Join(strings.TrimSpace(string(out)), "kube-proxy")
	})
	if kubeProxyErr != nil {
		t.Fatalf("kube-proxy: %v (PATRONUS_KUBE_PROXY=standin runs the Service probes through an nftables DNAT stand-in)", kubeProxyErr)
	}
	return kubeProxyPath, ""
}

var (
	kubeProxyOnce sync.Once
	kubeProxyPath string
	kubeProxyErr  error
)

// forwardAPIServer listens on 127.0.0.1 inside the node namespace and forwards to the API
// server on the host's loopback, so that kube-proxy, running in the node namespace, reaches
// it without any link in the root namespace. Returns the node-side address.
func forwardAPIServer(t *testing.T, n *node, apiHost string) string {
	t.Helper()
	u, err := url.Parse(apiHost)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := n.netns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
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
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", u.Host) // this goroutine's thread is in the root namespace
				if err != nil {
					return
				}
				defer up.Close()
				go func() { _, _ = io.Copy(up, c) }()
				_, _ = io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}

// services creates one ClusterIP Service per pod of n (TCP, UDP and SCTP on 80 and 81, as
// the upstream harness does) with its EndpointSlice (no controller manager runs), and has
// them translated in the node namespace by kube-proxy (nftables mode) or, when there is no
// binary, by an nftables DNAT stand-in (the reason logged). Sets n.svc.
func (n *node) services(t *testing.T, c *k8senv.Cluster) {
	t.Helper()
	ctx := context.Background()
	n.svc = map[string]netip.Addr{}
	var sports []corev1.ServicePort
	var eports []discoveryv1.EndpointPort
	for _, port := range netpolcases.Ports {
		for _, proto := range netpolcases.Protocols {
			name := strings.ToLower(fmt.Sprintf("%s-%d", proto, port))
			sports = append(sports, corev1.ServicePort{Name: name, Port: port, Protocol: proto})
			eports = append(eports, discoveryv1.EndpointPort{Name: ptr(name), Port: ptr(port), Protocol: ptr(proto)})
		}
	}
	nodeName := n.name
	for _, p := range n.pods {
		name := "s-" + p.name
		svc, err := n.k.CoreV1().Services(p.ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Ports: sports}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = n.k.DiscoveryV1().EndpointSlices(p.ns).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{p.ip.String()}, NodeName: &nodeName,
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}}},
			Ports: eports,
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.svc[p.String()] = netip.MustParseAddr(svc.Spec.ClusterIP)
	}
	bin, reason := kubeProxyBin(t)
	if bin != "" {
		startKubeProxy(t, n, c, bin)
		t.Logf("Services of %d pods through kube-proxy %s (nftables mode)", len(n.svc), bin)
		return
	}
	t.Logf("Services through an nftables DNAT stand-in for kube-proxy (%s)", reason)
	var b strings.Builder
	b.WriteString("table ip pt-kubeproxy {\n chain pre { type nat hook prerouting priority dstnat;\n")
	for k, ip := range n.svc {
		fmt.Fprintf(&b, "  ip daddr %s meta l4proto { tcp, udp, sctp } th dport { 80, 81 } dnat to %s\n", ip, n.pods[k].ip)
	}
	b.WriteString(" }\n}\n")
	if err := n.inNode(func() error { return nftApply(b.String()) }); err != nil {
		t.Fatalf("DNAT stand-in for kube-proxy: %v", err)
	}
	t.Cleanup(func() { _ = n.inNode(func() error { return nftApply("delete table ip pt-kubeproxy") }) })
}

// startKubeProxy runs kube-proxy (nftables mode) in the node namespace until it has
// programmed every Service of n.svc.
func startKubeProxy(t *testing.T, n *node, c *k8senv.Cluster, bin string) {
	t.Helper()
	addr := forwardAPIServer(t, n, c.Host())
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range cfg.Clusters {
		cl.Server = "https://" + addr
	}
	kc := filepath.Join(n.dir, "kube-proxy.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// kube-proxy waits for its Node object (node IPs, podCIDR) before it programs anything.
	nodeObj, err := n.k.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.0.0/16", PodCIDRs: []string{"10.244.0.0/16"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodeObj.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.244.0.1"}}
	nodeObj.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	if _, err := n.k.CoreV1().Nodes().UpdateStatus(ctx, nodeObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(pctx, "ip", "netns", "exec", filepath.Base(n.nsPath), bin,
		"--kubeconfig", kc, "--proxy-mode", "nftables", "--hostname-override", n.name,
		"--cluster-cidr", "10.244.0.0/16", "--conntrack-max-per-core", "0",
		"--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:10249" /* the node namespace's own loopback */, "-v", "2")
	logf, err := os.Create(filepath.Join(n.dir, "kube-proxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		logf.Close()
		// kube-proxy leaves its tables; they live in the node namespace, removed with it.
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		var out []byte
		_ = n.inNode(func() error {
			out, _ = exec.Command("nft", "list", "table", "ip", "kube-proxy").CombinedOutput()
			return nil
		})
		all := true
		for _, ip := range n.svc {
			all = all && strings.Contains(string(out), ip.String())
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(n.dir, "kube-proxy.log"))
			t.Fatalf("kube-proxy did not program the Services %v within 30s; nft:\n%s\nlog:\n%s", n.svc, out, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

package policy_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/patronus/patronus/integration/k8senv"
)

// kubeProxyBin finds a kube-proxy binary: $PATRONUS_KUBE_PROXY, else the lab's build cache.
func kubeProxyBin() string {
	if b := os.Getenv("PATRONUS_KUBE_PROXY"); b != "" {
		return b
	}
	home, _ := os.UserHomeDir()
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		cache = filepath.Join(home, ".cache")
	}
	m, _ := filepath.Glob(filepath.Join(cache, "patronus", "lab", "bin-*", "kube-proxy"))
	if len(m) > 0 {
		return m[len(m)-1]
	}
	return ""
}

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

// startKubeProxy runs kube-proxy (nftables mode) in the node namespace and returns the
// ClusterIPs of one Service per target pod (EndpointSlices written here: no controller
// manager runs).
func startKubeProxy(t *testing.T, n *node, c *k8senv.Cluster, bin string, targets ...*pod) []netip.Addr {
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
	var ips []netip.Addr
	for _, p := range targets {
		name := "svc-" + p.name
		svc, err := n.k.CoreV1().Services(p.ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ready := true
		port, pname, proto := int32(80), "http", corev1.ProtocolTCP
		nodeName := n.name
		_, err = n.k.DiscoveryV1().EndpointSlices(p.ns).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{p.ip.String()}, NodeName: &nodeName,
				Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
			Ports: []discoveryv1.EndpointPort{{Name: &pname, Port: &port, Protocol: &proto}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ips = append(ips, netip.MustParseAddr(svc.Spec.ClusterIP))
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
		for _, ip := range ips {
			all = all && strings.Contains(string(out), ip.String())
		}
		if all {
			return ips
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(n.dir, "kube-proxy.log"))
			t.Fatalf("kube-proxy did not program the Services %v within 30s; nft:\n%s\nlog:\n%s", ips, out, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

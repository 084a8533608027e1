package multinode

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/announce"
)

// Claims made through the API server are also spread as signed announcements: two nodes,
// each running the real agent binary in its namespace as the DaemonSet does (`patronus
// agent --manage-conflist`, mesh on: every node is a gateway when none is marked; the
// members find each other by multicast beacons on the underlay), claim their blocks with
// Leases; each agent's verified mesh state then holds both nodes' podblock announcements
// with the blocks their conflists use.
func TestAPIClaimsAnnouncedThroughMesh(t *testing.T) {
	requireRoot(t)
	c := k8senv.Start(t)
	k := c.Client()
	ctx := context.Background()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "patronus-config"},
		Data: map[string]string{"cluster-id": "test-cluster", "cluster-cidr": "10.244.0.0/16"}}
	if _, err := k.CoreV1().ConfigMaps("kube-system").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	l := newLab(t, c, "kube-system")
	bin := filepath.Join(pluginDir(t), "patronus") // built by pluginDir unless PATRONUS_BIN is set
	if b := os.Getenv("PATRONUS_BIN"); b != "" {
		bin = b
	}
	type agentNode struct {
		*node
		sock string
		api  *localapi.Client
	}
	var nodes []*agentNode
	for i, name := range []string{"mc-n1", "mc-n2"} {
		addr := netip.AddrFrom4([4]byte{192, 168, 82, byte(11 + i)})
		n := &agentNode{node: l.makeNode(name, addr)}
		n.sock = filepath.Join(n.dir, "agent.sock")
		createNodeObject(t, k, name, addr)
		relayAPI(t, n.netns, c.Host())
		cmd := exec.Command("ip", "netns", "exec", n.netns, bin, "agent", "--manage-conflist",
			"--kubeconfig", c.Kubeconfig(), "--database", n.db.Path(), "--socket", n.sock, "--cni-conflist", n.confList,
			"--metrics-addr", "off", "--enforce-policy=false", "--paths=false", "--probe-respond", "off",
			"--l7-metrics-socket", "off", "--multicast-iface", "eth0", "--beacon-interval", "1s",
			"--mesh-profile", "local", "--mesh-refresh", "2s", "--mesh-reconnect-interval", "1s", "--log-format", "text")
		cmd.Env = append(os.Environ(), "NODE_NAME="+name, "CLUSTER_ID=test-cluster")
		w := &tlogWriter{t: t}
		cmd.Stdout, cmd.Stderr = w, w
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() {
			cmd.Process.Signal(os.Interrupt)
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			w.mu.Lock()
			w.done = true
			w.mu.Unlock()
		})
		n.api = localapi.NewClient(n.sock)
		t.Cleanup(n.api.Close)
		eventually(t, 60*time.Second, name+" agent ready", func() error {
			select {
			case err := <-done:
				t.Fatalf("%s: agent exited: %v", name, err)
			default:
			}
			return n.api.Ready(ctx)
		})
		nodes = append(nodes, n)
	}
	blocks := map[string]string{}
	for _, n := range nodes {
		nn, err := n.api.NodeNet(ctx)
		if err != nil || nn.Source != "lease" {
			t.Fatalf("%s nodenet %+v (%v)", n.name, nn, err)
		}
		blocks[n.name] = nn.Block
	}
	if blocks["mc-n1"] == blocks["mc-n2"] {
		t.Fatalf("both nodes hold %s", blocks["mc-n1"])
	}
	for _, n := range nodes {
		eventually(t, 60*time.Second, n.name+" holds both signed block claims", func() error {
			var sr mesh.StateResponse
			if err := n.api.Do(ctx, http.MethodGet, "/v1/mesh", &sr); err != nil {
				return err
			}
			got := map[string]string{}
			for _, a := range sr.Announcements {
				if a.Kind == announce.KindPodBlock && len(a.Prefixes) == 1 && a.Claimed > 0 {
					got[a.Origin] = a.Prefixes[0].String()
				}
			}
			for name, b := range blocks {
				if got[name] != b {
					return fmt.Errorf("podblock announcements %v, want %v", got, blocks)
				}
			}
			return nil
		})
	}
	t.Logf("blocks %v announced signed and verified on both nodes", blocks)
}

// relayAPI makes the API server (on the root namespace's loopback) reachable at the same
// address inside the named namespace: the listener is made there, each connection is
// relayed from the root namespace.
func relayAPI(t *testing.T, netnsName, host string) {
	t.Helper()
	u, err := url.Parse(host)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := doIn(netnsName, func() error {
		if err := exec.Command("ip", "link", "set", "lo", "up").Run(); err != nil {
			return err
		}
		var err error
		ln, err = net.Listen("tcp", u.Host)
		return err
	}); err != nil {
		t.Fatalf("API relay: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
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
	})
}

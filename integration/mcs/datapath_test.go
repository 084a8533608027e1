package mcs_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/mcs"
	"github.com/patronus/patronus/mcs/datapath"
	"github.com/patronus/patronus/mcs/resolve"
)

// TestClusterSetIPDatapath follows a ServiceImport from the API server to packets: the
// leader writes the import and slices, the DatapathSyncer programs nftables in a node
// namespace, and a client in its own namespace (through the node's prerouting hook, as a
// pod would) reaches the exporting cluster's endpoints by ClusterSetIP. The remote
// cluster is simulated with the in-memory bus (TestMultiClusterServices covers the real
// mesh); the endpoints are listeners in the node namespace.
func TestClusterSetIPDatapath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nftables)")
	}
	k := k8senv.Start(t, k8senv.WithMCSCRDs())
	m, err := mcsclient.NewForConfig(k.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	east := &site{id: "east", k8s: k, kube: k.Client(), mcs: m, agent: k.AgentClient()}
	must(east.kube.CoreV1().Namespaces().Create(bg, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))(t)

	node, client := netnsPair(t, "10.245.1.5", "10.245.1.6", "10.244.2.7")

	bus := mcs.NewBus()
	west := bus.For("west")
	http := resolve.Port{Name: "http", Port: 80, Protocol: "TCP", TargetPort: 8080}
	westExport := resolve.Export{Namespace: ns, Name: "web", Type: resolve.TypeClusterSetIP, Ports: []resolve.Port{http},
		Endpoints:  []resolve.Endpoint{{Addr: mustAddr("10.245.1.5"), Ready: true}, {Addr: mustAddr("10.245.1.6"), Ready: true}},
		ExportedAt: time.Now().Add(-time.Hour)}
	if err := west.Publish(westExport); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	ctrl, err := mcs.New(mcs.Options{Kube: east.agent, MCS: east.agent, ClusterID: "east", Identity: "east-n1",
		LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond,
		Announcer: bus.For("east"), Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = ctrl.Run(ctx) })
	prog, err := datapath.New(datapath.Options{NetNS: node})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	ds, err := mcs.NewDatapathSyncer(mcs.DatapathOptions{Kube: east.agent, MCS: east.agent, ClusterID: "east", Datapath: prog, Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = ds.Run(ctx) })

	var vip string
	eventually(t, 15*time.Second, "ServiceImport with a ClusterSetIP", func() error {
		si, err := east.imp("web")
		if err != nil {
			return err
		}
		if len(si.Spec.IPs) != 1 {
			return fmt.Errorf("ips %v", si.Spec.IPs)
		}
		vip = si.Spec.IPs[0]
		return nil
	})
	eventually(t, 10*time.Second, "client reaches both of west's endpoints by ClusterSetIP", func() error {
		h := dial(client, vip, 40)
		if h["10.245.1.5"] == 0 || h["10.245.1.6"] == 0 || h["error"] != 0 {
			return fmt.Errorf("answers %v", h)
		}
		return nil
	})

	// East exports the service too: its ready local endpoint is preferred.
	east.service(t, "web", false, "", port{"http", 80, corev1.ProtocolTCP})
	east.endpoints(t, "web", map[string]bool{"10.244.2.7": true}, port{"http", 8080, corev1.ProtocolTCP})
	east.export(t, "web")
	eventually(t, 10*time.Second, "local endpoint preferred", func() error {
		if h := dial(client, vip, 20); h["10.244.2.7"] != 20 {
			return fmt.Errorf("answers %v", h)
		}
		return nil
	})
	// The local endpoint turns unready: traffic goes to west again.
	east.endpoints(t, "web", map[string]bool{"10.244.2.7": false}, port{"http", 8080, corev1.ProtocolTCP})
	eventually(t, 10*time.Second, "remote endpoints when the local one is not ready", func() error {
		h := dial(client, vip, 20)
		if h["10.244.2.7"] != 0 || h["error"] != 0 || h["10.245.1.5"]+h["10.245.1.6"] != 20 {
			return fmt.Errorf("answers %v", h)
		}
		return nil
	})
	// West's announcements expire: no connection goes to west any more.
	bus.Expire("west")
	eventually(t, 10*time.Second, "west evicted from the datapath", func() error {
		h := dial(client, vip, 3)
		if h["10.245.1.5"]+h["10.245.1.6"] != 0 {
			return fmt.Errorf("answers %v", h)
		}
		return nil
	})
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// netnsPair makes a node namespace (endpoint addresses with listeners on :8080, a route
// for the clusterset range) and a client namespace behind a veth, default route via the
// node. It returns their paths.
func netnsPair(t *testing.T, addrs ...string) (nodePath string, client cnins.NetNS) {
	t.Helper()
	id := fmt.Sprintf("%06x", rand.IntN(1<<24))
	nodeNS, clNS := "pt-mcsn-"+id, "pt-mcsc-"+id
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	for _, n := range []string{nodeNS, clNS} {
		run("netns", "add", n)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
		run("-n", n, "link", "set", "lo", "up")
	}
	run("-n", nodeNS, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	run("-n", nodeNS, "link", "set", "d0", "up")
	run("-n", nodeNS, "link", "set", "d1", "up")
	run("-n", nodeNS, "route", "add", "10.112.0.0/16", "dev", "d0")
	for _, a := range addrs {
		run("-n", nodeNS, "addr", "add", a+"/32", "dev", "d0")
	}
	run("-n", nodeNS, "link", "add", "n0", "type", "veth", "peer", "name", "c0", "netns", clNS)
	run("-n", nodeNS, "addr", "add", "10.250.0.1/24", "dev", "n0")
	run("-n", nodeNS, "link", "set", "n0", "up")
	run("-n", clNS, "addr", "add", "10.250.0.2/24", "dev", "c0")
	run("-n", clNS, "link", "set", "c0", "up")
	run("-n", clNS, "route", "add", "default", "via", "10.250.0.1")
	nodePath = "/var/run/netns/" + nodeNS
	nodeH, err := cnins.GetNS(nodePath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nodeH.Close() })
	client, err = cnins.GetNS("/var/run/netns/" + clNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	for _, a := range addrs {
		var l net.Listener
		if err := nodeH.Do(func(cnins.NetNS) error {
			var err error
			l, err = net.Listen("tcp", net.JoinHostPort(a, "8080"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, a)
				c.Close()
			}
		}()
	}
	return nodePath, client
}

// dial connects n times to vip:80 from the client namespace and counts the answers.
func dial(client cnins.NetNS, vip string, n int) map[string]int {
	out := map[string]int{}
	for range n {
		_ = client.Do(func(cnins.NetNS) error {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(vip, "80"), 500*time.Millisecond)
			if err != nil {
				out["error"]++
				return nil
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Second))
			b, _ := io.ReadAll(c)
			out[string(b)]++
			return nil
		})
	}
	return out
}

package tunneltest

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/dataplane/route"
	"github.com/patronus/patronus/dataplane/tunnel"
)

// A second node of cluster A that is not a gateway (node network 172.18.0.0/24 to gateway
// A, its pods on 10.244.1.0/24): its reconciler routes cluster B's pod CIDR to the
// gateway's node address, and its pod reaches pod B through gateway A's tunnel.
func TestNonGatewayNodeRoutesViaGateway(t *testing.T) {
	a, b := newPair(t)
	connect(t, a, b)
	waitTunnel(t, a, b)
	nodeName := a.gwName + "n"
	node := enforcetest.NewNS(t, nodeName)
	pod := &side{cluster: a.cluster, podName: nodeName + "p", podIP: netip.MustParseAddr("10.244.1.2"), podCIDR: netip.MustParsePrefix("10.244.1.0/24")}
	pod.pod = enforcetest.NewNS(t, pod.podName)
	gwNodeAddr := netip.MustParseAddr("172.18.0.1")
	must(t, a.gw.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "node2"}, PeerName: "n2", PeerNamespace: netlink.NsFd(int(node.Fd()))}); err != nil {
			return err
		}
		if err := addrUp("node2", netip.MustParsePrefix("172.18.0.1/24")); err != nil {
			return err
		}
		// Intra-cluster pod routing, as the cluster's own networking provides it.
		return netlink.RouteAdd(&netlink.Route{Dst: prefixIPNet(pod.podCIDR), Gw: netip.MustParseAddr("172.18.0.2").AsSlice()})
	}))
	must(t, node.Do(func(ns.NetNS) error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return err
		}
		if err := up("lo"); err != nil {
			return err
		}
		if err := addrUp("n2", netip.MustParsePrefix("172.18.0.2/24")); err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
			return err
		}
		if err := addrUp("br0", netip.MustParsePrefix("10.244.1.1/24")); err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vpod"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(pod.pod.Fd()))}); err != nil {
			return err
		}
		br, _ := netlink.LinkByName("br0")
		v, _ := netlink.LinkByName("vpod")
		if err := netlink.LinkSetMaster(v, br); err != nil {
			return err
		}
		return netlink.LinkSetUp(v)
	}))
	must(t, pod.pod.Do(func(ns.NetNS) error {
		if err := up("lo"); err != nil {
			return err
		}
		if err := addrUp("eth0", netip.MustParsePrefix("10.244.1.2/24")); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Gw: netip.MustParseAddr("10.244.1.1").AsSlice()})
	}))

	k, err := route.NewNetlinkKernel(node.Path())
	must(t, err)
	defer k.Close()
	rec := tunnel.NewReconciler(tunnel.ReconcilerOptions{Routes: route.NewRouter(route.Options{Kernel: k})})
	in := tunnel.Input{LocalCluster: a.cluster, GatewayAddr: gwNodeAddr, GatewayDev: "n2",
		Gateways: []tunnel.Gateway{b.gateway(b.spec.PrivateKey.PublicKey())}}
	_, err = rec.Reconcile(in)
	must(t, err)
	if out := routesProto77(t, nodeName); !strings.Contains(out, "10.248.0.0/16 via 172.18.0.1 dev n2") {
		t.Fatalf("non-gateway node routes:\n%s", out)
	}
	eventually(t, handshakeTimeout, "pod on the non-gateway node pings pod B", func() error { return ping(pod.podName, b.podIP, 0) })
	must(t, ping(b.podName, pod.podIP, 0))
	must(t, tcpEcho(t, pod, b, 1<<20))
	must(t, tcpEcho(t, b, pod, 1<<20))

	// Cluster B gone: the non-gateway node's route is withdrawn too.
	in.Gateways = nil
	_, err = rec.Reconcile(in)
	must(t, err)
	if out := routesProto77(t, nodeName); strings.TrimSpace(out) != "" {
		t.Fatalf("routes left:\n%s", out)
	}
}

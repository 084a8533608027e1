package enforce

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/policy"
)

// uplinkBenchNode makes a node namespace with bridge br0 and `pods` veths on it (their
// peers, up, in a second namespace) and an uplink veth with `routes` /24 routes through
// it, and returns the node namespace and the pods' endpoints.
func uplinkBenchNode(b *testing.B, pods, routes int) (node, peers ns.NetNS, eps []Endpoint) {
	b.Helper()
	enforcetest.RequireRoot(b)
	rnd := make([]byte, 3)
	_, _ = rand.Read(rnd)
	id := hex.EncodeToString(rnd)
	node = enforcetest.NewBridgeNode(b, "pt-upb-"+id+"-n", "10.250.0.1/16")
	peers = enforcetest.NewNS(b, "pt-upb-"+id+"-p")
	err := node.Do(func(ns.NetNS) error {
		br, err := netlink.LinkByName("br0")
		if err != nil {
			return err
		}
		veth := func(host, peer string, master int) (netlink.Link, error) {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MasterIndex: master}, PeerName: peer}); err != nil {
				return nil, fmt.Errorf("veth %s: %w", host, err)
			}
			h, err := netlink.LinkByName(host)
			if err != nil {
				return nil, err
			}
			p, err := netlink.LinkByName(peer)
			if err != nil {
				return nil, err
			}
			if err := netlink.LinkSetNsFd(p, int(peers.Fd())); err != nil {
				return nil, err
			}
			return h, netlink.LinkSetUp(h)
		}
		up, err := veth("ptbup", "ptbupp", 0)
		if err != nil {
			return err
		}
		ua, _ := netlink.ParseAddr("10.77.0.1/24")
		if err := netlink.AddrAdd(up, ua); err != nil {
			return err
		}
		for i := 0; i < routes; i++ {
			dst := &net.IPNet{IP: net.IPv4(10, byte(100+i/256), byte(i%256), 0), Mask: net.CIDRMask(24, 32)}
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Dst: dst, Gw: net.IPv4(10, 77, 0, 2)}); err != nil {
				return fmt.Errorf("route %v: %w", dst, err)
			}
		}
		for i := 0; i < pods; i++ {
			h := fmt.Sprintf("ptbh%d", i)
			if _, err := veth(h, fmt.Sprintf("ptbp%d", i), br.Attrs().Index); err != nil {
				return err
			}
			ip := netip.AddrFrom4([4]byte{10, 250, byte(1 + i/200), byte(10 + i%200)})
			eps = append(eps, Endpoint{HostVeth: h, EndpointPolicy: policy.EndpointPolicy{Namespace: "bench", Pod: h,
				IPs: []netip.Addr{ip}, IngressIsolated: true, IngressPolicies: []string{"bench/p"},
				Ingress: []policy.Rule{{Policy: "bench/p", Peers: []policy.Peer{{Prefix: netip.MustParsePrefix("10.250.0.0/16")}},
					Ports: []policy.PortRange{{Protocol: policy.TCP, First: 8080, Last: 8080}}}}}})
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	// The peers come up last: the node's side sees their carrier (and IPv6 link-local
	// routes) as on a real node.
	err = peers.Do(func(ns.NetNS) error {
		ls, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range ls {
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return node, peers, eps
}

// benchPod adds (or, with del, deletes) a pod veth ptbx on br0 whose peer is up in peers.
func benchPod(b *testing.B, node, peers ns.NetNS, del bool) {
	err := node.Do(func(ns.NetNS) error {
		if del {
			l, err := netlink.LinkByName("ptbx")
			if err != nil {
				return err
			}
			return netlink.LinkDel(l)
		}
		br, err := netlink.LinkByName("br0")
		if err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ptbx", MasterIndex: br.Attrs().Index}, PeerName: "ptbxp"}); err != nil {
			return err
		}
		h, err := netlink.LinkByName("ptbx")
		if err != nil {
			return err
		}
		p, err := netlink.LinkByName("ptbxp")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(p, int(peers.Fd())); err != nil {
			return err
		}
		return netlink.LinkSetUp(h)
	})
	if err == nil && !del {
		err = peers.Do(func(ns.NetNS) error {
			p, err := netlink.LinkByName("ptbxp")
			if err != nil {
				return err
			}
			return netlink.LinkSetUp(p)
		})
	}
	if err != nil {
		b.Fatalf("pod veth (delete %v): %v", del, err)
	}
}

// BenchmarkSetRouteUplinks measures Set with route uplinks on a node of 50 pod veths
// on a bridge and 200 routes through an uplink: "unchanged" is a Set with the same
// endpoints (a relist), "policy-changed" alternates one endpoint's rules (a policy
// edit), "pod-added-then-deleted" is the Set after a pod's veth was made plus the one
// after it was deleted (the veth work itself not timed). "followed" is this package's enforcer; "dump-every-set" the same with its
// notification socket closed, so that every Set dumps links and routes (the cost
// before the view was followed, less the second link dump the old Set made).
func BenchmarkSetRouteUplinks(b *testing.B) {
	const pods, routes = 50, 200
	node, peers, eps := uplinkBenchNode(b, pods, routes)
	added := append(append([]Endpoint(nil), eps...), Endpoint{HostVeth: "ptbx",
		EndpointPolicy: policy.EndpointPolicy{Namespace: "bench", Pod: "ptbx", IPs: []netip.Addr{netip.MustParseAddr("10.250.9.9")}}})
	changed := append([]Endpoint(nil), eps...)
	changed[0].Ingress = []policy.Rule{{Policy: "bench/p", Peers: []policy.Peer{{Prefix: netip.MustParsePrefix("10.250.0.0/24")}},
		Ports: []policy.PortRange{{Protocol: policy.TCP, First: 8081, Last: 8081}}}}
	ctx := context.Background()
	for _, variant := range []string{"followed", "dump-every-set"} {
		pin := filepath.Join(enforcetest.BPFFS(b), "patronus")
		e, err := NewEBPF(Options{PinDir: pin, NetNS: node.Path(), RouteUplinks: true})
		if err != nil {
			b.Fatal(err)
		}
		if variant == "dump-every-set" {
			e.uplinks.close()
		}
		if err := e.Set(ctx, eps); err != nil {
			b.Fatal(err)
		}
		for _, load := range []string{"unchanged", "policy-changed", "pod-added-then-deleted"} {
			b.Run(variant+"/"+load, func(b *testing.B) {
				d0 := e.uplinks.dumps
				for i := 0; i < b.N; i++ {
					if load == "pod-added-then-deleted" {
						// Two Sets per op; making and deleting the veth is not timed.
						b.StopTimer()
						benchPod(b, node, peers, false)
						b.StartTimer()
						if err := e.Set(ctx, added); err != nil {
							b.Fatal(err)
						}
						b.StopTimer()
						benchPod(b, node, peers, true)
						b.StartTimer()
						if err := e.Set(ctx, eps); err != nil {
							b.Fatal(err)
						}
						continue
					}
					in := eps
					if load == "policy-changed" && i%2 == 0 {
						in = changed
					}
					if err := e.Set(ctx, in); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(e.uplinks.dumps-d0)/float64(b.N), "dumps/op")
			})
		}
		e.Close()
	}
}

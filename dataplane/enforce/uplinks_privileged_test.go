package enforce

import (
	"context"
	"fmt"
	stdmaps "maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
	"github.com/patronus/patronus/policy"
)

// egressPrograms names the programs of e attached at TCX egress of device name in the
// node namespace (the kernel's view, not the pins).
func egressPrograms(t *testing.T, tp *enforcetest.Topology, e *EBPF, name string) []string {
	t.Helper()
	ids := map[ebpf.ProgramID]string{}
	for n, p := range e.progs() {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ids[id] = n
	}
	var out []string
	err := tp.Node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			if n, ok := ids[p.ID]; ok {
				out = append(out, n)
			} else {
				out = append(out, fmt.Sprintf("prog#%d", p.ID))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("egress programs of %s: %v", name, err)
	}
	return out
}

func inNode(t *testing.T, tp *enforcetest.Topology, f func() error) {
	t.Helper()
	if err := tp.Node.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// addUplink makes a device with a route to dst through it, as an underlay device the
// node's routing sets up while the agent runs: a veth (this kernel has no dummy links)
// whose peer, name+"p", stays down without routes.
func addUplink(name, dst string) error {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		return fmt.Errorf("veth %s: %w", name, err)
	}
	d, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(d); err != nil {
		return err
	}
	_, n, _ := net.ParseCIDR(dst)
	return netlink.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Dst: n})
}

// vxlan is a tunnel device without a route yet.
func vxlan(name string) *netlink.Vxlan {
	return &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name}, VxlanId: 7, Port: 4789}
}

// addBridgePort makes a veth pair whose first end is a port of br0 (a pod's host veth;
// its peer stays down in the node namespace).
func addBridgePort(host, peer string) error {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: peer}); err != nil {
		return fmt.Errorf("veth %s: %w", host, err)
	}
	br, err := netlink.LinkByName("br0")
	if err != nil {
		return err
	}
	h, err := netlink.LinkByName(host)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetMaster(h, br); err != nil {
		return err
	}
	return netlink.LinkSetUp(h)
}

// TestRouteUplinksFollowChanges: with route uplinks, Set dumps the node's links and
// routes once and then follows their notifications: Sets for policy changes and a new
// pod dump nothing, a device that gets a route after start has to_net on the next Set,
// and one deleted and made again is attached again.
func TestRouteUplinksFollowChanges(t *testing.T) {
	tp := enforcetest.NewTopology(t, 2)
	pin := filepath.Join(enforcetest.BPFFS(t), "patronus")
	e, err := NewEBPF(Options{PinDir: pin, NetNS: tp.Node.Path(), RouteUplinks: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if e.uplinks == nil || e.uplinks.fd < 0 {
		t.Fatal("route uplinks on, but the enforcer does not follow link and route changes")
	}
	e.uplinks.resync = time.Hour // no safety-net dump during the test
	ctx := context.Background()
	dumps := func() int {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.uplinks.dumps
	}
	if err := e.Set(ctx, endpoints(tp)); err != nil {
		t.Fatal(err)
	}
	first := dumps()
	if first == 0 {
		t.Fatal("the first Set made no dump: where do its links and routes come from?")
	}
	// br0 has the route to the pods but is their bridge: no to_net there.
	if got := egressPrograms(t, tp, e, "br0"); len(got) != 0 {
		t.Errorf("br0 egress programs %v, want none", got)
	}

	// Nothing changed, then a policy changed: no dump.
	if err := e.Set(ctx, endpoints(tp)); err != nil {
		t.Fatal(err)
	}
	if err := e.Set(ctx, policyAB(tp)); err != nil {
		t.Fatal(err)
	}
	if d := dumps(); d != first {
		t.Errorf("Sets with links and routes unchanged made %d dumps", d-first)
	}

	// A pod is added: its veth comes up on the bridge (link notifications only).
	hostVeth := "ptq" + tp.ID
	inNode(t, tp, func() error { return addBridgePort(hostVeth, "ptr"+tp.ID) })
	eps := append(policyAB(tp), Endpoint{HostVeth: hostVeth,
		EndpointPolicy: policy.EndpointPolicy{Namespace: "ns", Pod: "q", IPs: []netip.Addr{netip.MustParseAddr("10.250.0.40")}}})
	if err := e.Set(ctx, eps); err != nil {
		t.Fatalf("Set right after the pod's veth was made: %v", err)
	}
	if got := egressPrograms(t, tp, e, hostVeth); !slices.Equal(got, []string{"to_pod"}) {
		t.Errorf("new pod veth egress programs %v, want [to_pod]", got)
	}
	if d := dumps(); d != first {
		t.Errorf("a pod added on the bridge cost %d dumps", d-first)
	}

	// A device made after start with a route: attached by the next Set, without a dump
	// (the route's notification names the device).
	up := "ptu" + tp.ID
	inNode(t, tp, func() error { return addUplink(up, "10.98.0.0/24") })
	if err := e.Set(ctx, eps); err != nil {
		t.Fatal(err)
	}
	if got := egressPrograms(t, tp, e, up); !slices.Equal(got, []string{"to_net"}) {
		t.Fatalf("device with a route added after start: egress programs %v, want [to_net]", got)
	}
	if d := dumps(); d != first {
		t.Errorf("a new route cost %d dumps", d-first)
	}

	// A tunnel device that existed without a route gets one later.
	late := "ptl" + tp.ID
	inNode(t, tp, func() error {
		return netlink.LinkAdd(vxlan(late))
	})
	if err := e.Set(ctx, eps); err != nil {
		t.Fatal(err)
	}
	if got := egressPrograms(t, tp, e, late); len(got) != 0 {
		t.Fatalf("device without a route: egress programs %v, want none", got)
	}
	inNode(t, tp, func() error {
		l, err := netlink.LinkByName(late)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		_, n, _ := net.ParseCIDR("10.97.0.0/24")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: n})
	})
	if err := e.Set(ctx, eps); err != nil {
		t.Fatal(err)
	}
	if got := egressPrograms(t, tp, e, late); !slices.Equal(got, []string{"to_net"}) {
		t.Fatalf("route added to an existing device: egress programs %v, want [to_net]", got)
	}

	// The device is deleted (its link goes with it) and made again under a new index.
	inNode(t, tp, func() error {
		l, err := netlink.LinkByName(up)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
	if err := e.Set(ctx, eps); err != nil {
		t.Fatalf("Set after an uplink was deleted: %v", err)
	}
	inNode(t, tp, func() error { return addUplink(up, "10.98.0.0/24") })
	if err := e.Set(ctx, eps); err != nil {
		t.Fatal(err)
	}
	if got := egressPrograms(t, tp, e, up); !slices.Equal(got, []string{"to_net"}) {
		t.Fatalf("uplink made again: egress programs %v, want [to_net]", got)
	}
	// The pod's bridge is still never an uplink.
	if got := egressPrograms(t, tp, e, "br0"); len(got) != 0 {
		t.Errorf("br0 egress programs %v, want none", got)
	}
}

// A link and a route made between the subscription and the first refresh are queued
// notifications that refresh applies before its first dump (the agent's first Set came
// after nodenet added its routes, and applying them into the empty view panicked).
func TestUplinkViewChangesBeforeFirstRefresh(t *testing.T) {
	tp := enforcetest.NewTopology(t, 1)
	var v *uplinkView
	inNode(t, tp, func() error {
		var err error
		if v, err = openUplinkView(); err != nil {
			return err
		}
		return addUplink("ptq"+tp.ID, "10.91.0.0/24")
	})
	t.Cleanup(func() { v.close() })
	inNode(t, tp, v.refresh)
	idx, ok := v.byName["ptq"+tp.ID]
	if !ok || !v.routeDevs[idx] {
		t.Fatalf("after the first refresh the view lacks ptq%s or its route: byName %v, routeDevs %v", tp.ID, v.byName, v.routeDevs)
	}
}

// TestUplinkViewMatchesDump: after each kind of change, the view kept from notifications
// picks the same devices (and names) as a fresh dump.
func TestUplinkViewMatchesDump(t *testing.T) {
	tp := enforcetest.NewTopology(t, 1)
	var v *uplinkView
	inNode(t, tp, func() error {
		var err error
		v, err = openUplinkView()
		if err != nil {
			return err
		}
		return v.refresh()
	})
	t.Cleanup(func() { v.close() })
	id := tp.ID
	// dev looks a device up; a missing one makes the step's next netlink call fail.
	dev := func(name string) netlink.Link {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name, Index: 1 << 30}}
		}
		return l
	}
	route := func(name, dst string) *netlink.Route {
		_, n, _ := net.ParseCIDR(dst)
		return &netlink.Route{LinkIndex: dev(name).Attrs().Index, Dst: n}
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"device with a route", func() error { return addUplink("pta"+id, "10.90.0.0/24") }},
		{"second route, IPv6", func() error {
			return netlink.RouteAdd(route("pta"+id, "fd00:90::/64"))
		}},
		{"device without a route", func() error {
			return netlink.LinkAdd(vxlan("ptb" + id))
		}},
		{"multipath route", func() error {
			if err := netlink.LinkSetUp(dev("ptb" + id)); err != nil {
				return err
			}
			_, n, _ := net.ParseCIDR("10.91.0.0/24")
			return netlink.RouteAdd(&netlink.Route{Dst: n, MultiPath: []*netlink.NexthopInfo{
				{LinkIndex: dev("pta" + id).Attrs().Index}, {LinkIndex: dev("ptb" + id).Attrs().Index}}})
		}},
		{"multipath route deleted", func() error {
			_, n, _ := net.ParseCIDR("10.91.0.0/24")
			return netlink.RouteDel(&netlink.Route{Dst: n})
		}},
		{"route in another table", func() error {
			r := route("ptb"+id, "10.92.0.0/24")
			r.Table = 100
			return netlink.RouteAdd(r)
		}},
		// pth, ptf and ptg have no carrier (their peers are down), hence no IPv6
		// link-local route: only the route the step adds.
		{"route replaced onto another device", func() error {
			if err := addUplink("pth"+id, "10.93.0.0/24"); err != nil {
				return err
			}
			return netlink.RouteReplace(route("pta"+id, "10.93.0.0/24"))
		}},
		{"device down (IPv4 routes go silently)", func() error { return netlink.LinkSetDown(dev("pta" + id)) }},
		{"device with one IPv4 route goes down", func() error {
			if err := addUplink("ptf"+id, "10.95.0.0/24"); err != nil {
				return err
			}
			return netlink.LinkSetDown(dev("ptf" + id))
		}},
		{"device up, route again", func() error {
			if err := netlink.LinkSetUp(dev("pta" + id)); err != nil {
				return err
			}
			return netlink.RouteAdd(route("pta"+id, "10.90.0.0/24"))
		}},
		{"device with a route joins the bridge", func() error {
			if err := addUplink("ptg"+id, "10.94.0.0/24"); err != nil {
				return err
			}
			return netlink.LinkSetMasterByIndex(dev("ptg"+id), dev("br0").Attrs().Index)
		}},
		{"its route deleted while a port", func() error { return netlink.RouteDel(route("ptg"+id, "10.94.0.0/24")) }},
		{"it leaves the bridge", func() error { return netlink.LinkSetNoMaster(dev("ptg" + id)) }},
		{"renamed", func() error {
			l := dev("ptb" + id)
			if err := netlink.LinkSetDown(l); err != nil {
				return err
			}
			if err := netlink.LinkSetName(l, "ptc"+id); err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		}},
		{"pod veth added", func() error { return addBridgePort("ptd"+id, "pte"+id) }},
		{"device deleted", func() error { return netlink.LinkDel(dev("pta" + id)) }},
	}
	names := func(ls []netlink.Link) []string {
		var out []string
		for _, l := range ls {
			out = append(out, l.Attrs().Name)
		}
		slices.Sort(out)
		return out
	}
	for _, s := range steps {
		inNode(t, tp, func() error {
			if err := s.do(); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			before := v.dumps
			// The kernel adds some routes a moment later (IPv6 link-local): compare
			// again before calling a difference a miss.
			var got, want []string
			var gotNames, wantNames map[string]int
			for try := 0; try < 10; try++ {
				if try > 0 {
					time.Sleep(100 * time.Millisecond)
				}
				if err := v.refresh(); err != nil {
					return err
				}
				fresh := &uplinkView{fd: -1, now: v.now}
				if err := fresh.refresh(); err != nil {
					return err
				}
				got, want = names(v.uplinkDevices(nil)), names(fresh.uplinkDevices(nil))
				gotNames, wantNames = v.byName, fresh.byName
				if slices.Equal(got, want) && stdmaps.Equal(gotNames, wantNames) {
					break
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s: followed view picks %v, a dump %v", s.name, got, want)
			}
			if !stdmaps.Equal(gotNames, wantNames) {
				t.Errorf("%s: followed names %v, dumped %v", s.name, gotNames, wantNames)
			}
			t.Logf("%s: uplinks %v, %d dumps", s.name, got, v.dumps-before)
			return nil
		})
	}
}

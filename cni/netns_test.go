package cni_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/patronus/patronus/dataplane/link"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/manifests"
	"github.com/patronus/patronus/store"
)

type libcniResult struct{ raw types.Result }

func (r libcniResult) current(t *testing.T) *current.Result {
	t.Helper()
	c, err := current.NewResultFromResult(r.raw)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// podIP returns the pod's address from an ADD result, checking the result's shape.
func podIP(t *testing.T, r libcniResult, p pod) netip.Addr {
	t.Helper()
	res := r.current(t)
	if len(res.IPs) != 1 || res.IPs[0].Interface == nil {
		t.Fatalf("want one IP bound to an interface, got %+v", res.IPs)
	}
	itf := res.Interfaces[*res.IPs[0].Interface]
	if itf.Name != "eth0" || itf.Sandbox != p.netns {
		t.Fatalf("IP's interface is %+v, want eth0 in %s", itf, p.netns)
	}
	a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP)
	a = a.Unmap()
	if !netip.MustParsePrefix("10.244.0.0/16").Contains(a) || a.Compare(netip.MustParseAddr("10.244.1.10")) < 0 {
		t.Fatalf("address %s outside the configured range", a)
	}
	if !res.IPs[0].Gateway.Equal(net.ParseIP("10.244.0.1")) {
		t.Fatalf("gateway %s, want 10.244.0.1", res.IPs[0].Gateway)
	}
	want := map[string]bool{"0.0.0.0/0": false, "10.96.0.0/12": false}
	for _, r := range res.Routes {
		want[r.Dst.String()] = true
	}
	for dst, ok := range want {
		if !ok {
			t.Fatalf("result lacks route %s: %+v", dst, res.Routes)
		}
	}
	return a
}

func gcAttachment(p pod) types.GCAttachment {
	return types.GCAttachment{ContainerID: p.id, IfName: "eth0"}
}

func ping(t *testing.T, from pod, to netip.Addr) {
	t.Helper()
	if out, err := podExec(t, from.netns, "ping", "-c", "1", "-W", "2", to.String()); err != nil {
		t.Fatalf("ping %s from %s: %v\n%s", to, from.id, err, out)
	}
}

func TestSpecVersions(t *testing.T) {
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			h := newHarness(t)
			l := h.list(v)
			a, b := h.newPod("a"), h.newPod("b")
			ra, err := h.add(l, a)
			if err != nil {
				t.Fatalf("ADD a: %v", err)
			}
			rb, err := h.add(l, b)
			if err != nil {
				t.Fatalf("ADD b: %v", err)
			}
			ipA, ipB := podIP(t, ra, a), podIP(t, rb, b)
			if ipA == ipB {
				t.Fatalf("both pods got %s", ipA)
			}
			// MTU from the config on the pod side.
			pl, err := podLinkHandle(t, a.netns).LinkByName("eth0")
			if err != nil || pl.Attrs().MTU != 1400 {
				t.Fatalf("pod eth0: %v, mtu %d", err, pl.Attrs().MTU)
			}
			// Registered with the pod's identity.
			rows := h.pods()
			if len(rows) != 2 {
				t.Fatalf("want 2 rows, got %d", len(rows))
			}
			for _, r := range rows {
				p := a
				if r.Name == "b" {
					p = b
				}
				if r.ContainerID != p.id || r.Namespace != "default" || r.UID != "uid-"+r.Name || r.Netns != p.netns ||
					r.HostVeth != link.HostVethName(p.id, "eth0") || r.QoSClass != "best-effort" || r.Network != h.network || len(r.IPs) != 1 {
					t.Fatalf("row %+v does not describe pod %s", r, p.id)
				}
			}
			// Forwarding is on in the node namespace.
			var fwd []byte
			h.inNode(func() error { fwd, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward"); return err })
			if strings.TrimSpace(string(fwd)) != "1" {
				t.Fatalf("ip_forward in node namespace = %q", fwd)
			}
			ping(t, a, ipB)
			ping(t, b, ipA)
			ping(t, a, netip.MustParseAddr("10.244.0.1"))

			err = h.check(l, a)
			if v == "0.3.1" {
				if !errors.Is(err, libcni.ErrorCheckNotSupp) {
					t.Fatalf("CHECK on 0.3.1: want not supported, got %v", err)
				}
			} else if err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			if err := h.status(l); err != nil {
				t.Fatalf("STATUS: %v", err)
			}
			if err := h.gc(l, a, b); err != nil {
				t.Fatalf("GC keeping both: %v", err)
			}
			if n := len(h.hostVeths()); n != 2 {
				t.Fatalf("GC with both valid removed veths: %d left", n)
			}
			for _, p := range []pod{a, a, b} { // DEL twice is fine
				if err := h.del(l, p); err != nil {
					t.Fatalf("DEL %s: %v", p.id, err)
				}
			}
			h.assertClean()
		})
	}
}

func TestCheckDetectsRemovals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, h *harness, p pod, ip netip.Addr)
		want   string
	}{
		{"service route", func(t *testing.T, h *harness, p pod, _ netip.Addr) {
			nh := podLinkHandle(t, p.netns)
			l, _ := nh.LinkByName("eth0")
			_, dst, _ := net.ParseCIDR("10.96.0.0/12")
			if err := nh.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst}); err != nil {
				t.Fatal(err)
			}
		}, "10.96.0.0/12"},
		{"default route", func(t *testing.T, h *harness, p pod, _ netip.Addr) {
			nh := podLinkHandle(t, p.netns)
			l, _ := nh.LinkByName("eth0")
			_, dst, _ := net.ParseCIDR("0.0.0.0/0")
			if err := nh.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst}); err != nil {
				t.Fatal(err)
			}
		}, "0.0.0.0/0"},
		{"address", func(t *testing.T, h *harness, p pod, ip netip.Addr) {
			nh := podLinkHandle(t, p.netns)
			l, _ := nh.LinkByName("eth0")
			if err := nh.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(16, 32)}}); err != nil {
				t.Fatal(err)
			}
		}, "IP"}, // replaced by the pod's address
		{"mtu", func(t *testing.T, h *harness, p pod, _ netip.Addr) {
			nh := podLinkHandle(t, p.netns)
			l, _ := nh.LinkByName("eth0")
			if err := nh.LinkSetMTU(l, 1300); err != nil {
				t.Fatal(err)
			}
		}, "mtu 1300"},
		{"host veth", func(t *testing.T, h *harness, p pod, _ netip.Addr) {
			if err := h.inNode(func() error { return link.Netlink{}.DeleteLink(link.HostVethName(p.id, "eth0")) }); err != nil {
				t.Fatal(err)
			}
		}, "host veth"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			l := h.list("1.1.0")
			p := h.newPod("c")
			r, err := h.add(l, p)
			if err != nil {
				t.Fatal(err)
			}
			ip := podIP(t, r, p)
			if err := h.check(l, p); err != nil {
				t.Fatalf("CHECK before: %v", err)
			}
			tc.break_(t, h, p, ip)
			want := tc.want
			if want == "IP" {
				want = ip.String()
			}
			err = h.check(l, p)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("CHECK after removing %s: want an error naming %q, got %v", tc.name, want, err)
			}
			if err := h.del(l, p); err != nil {
				t.Fatal(err)
			}
			h.assertClean()
		})
	}
}

func TestDelWhenEverythingIsGone(t *testing.T) {
	h := newHarness(t)
	l := h.list("1.1.0")
	p := h.newPod("gone")
	if _, err := h.add(l, p); err != nil {
		t.Fatal(err)
	}
	// The runtime lost its cache (no prevResult) and the namespace is gone.
	h.cni = libcni.NewCNIConfigWithCacheDir(h.cni.Path, filepath.Join(h.dir, "other-cache"), nil)
	if err := netns.DeleteNamed(filepath.Base(p.netns)); err != nil {
		t.Fatal(err)
	}
	if err := h.del(l, p); err != nil {
		t.Fatalf("DEL without netns and prevResult: %v", err)
	}
	if err := h.del(l, p); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	// A DEL for an attachment that never existed.
	if err := h.del(l, h.newPod("never")); err != nil {
		t.Fatalf("DEL of an unknown container: %v", err)
	}
	h.assertClean()
}

func TestAddRollsBack(t *testing.T) {
	t.Run("interface name taken in the pod", func(t *testing.T) {
		h := newHarness(t)
		l := h.list("1.1.0")
		p := h.newPod("taken")
		nh := podLinkHandle(t, p.netns)
		if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0-peer"}); err != nil {
			t.Fatal(err)
		}
		_, err := h.add(l, p)
		if err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("ADD into a namespace that has eth0: want 'already exists', got %v", err)
		}
		h.assertClean()
	})
	t.Run("registration fails after everything else", func(t *testing.T) {
		h := newHarness(t)
		l := h.list("1.1.0")
		db, err := store.Open(context.Background(), h.db)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.SQL().Exec(`CREATE TRIGGER fail_register BEFORE INSERT ON pods BEGIN SELECT RAISE(ABORT, 'injected failure'); END`); err != nil {
			t.Fatal(err)
		}
		p := h.newPod("late")
		_, err = h.add(l, p)
		if err == nil || !strings.Contains(err.Error(), "injected failure") {
			t.Fatalf("want the injected failure, got %v", err)
		}
		h.assertClean()
		if out, err := podExec(t, p.netns, "ip", "-o", "link", "show", "eth0"); err == nil {
			t.Fatalf("pod interface left behind: %s", out)
		}
		// Once the database works again, the same pod gets the first address: the failed
		// ADD released it.
		db.SQL().Exec(`DROP TRIGGER fail_register`)
		db.Close()
		r, err := h.add(l, p)
		if err != nil {
			t.Fatal(err)
		}
		if ip := podIP(t, r, p); ip != netip.MustParseAddr("10.244.1.11") && ip != netip.MustParseAddr("10.244.1.10") {
			t.Fatalf("retry got %s", ip)
		}
		if err := h.del(l, p); err != nil {
			t.Fatal(err)
		}
		h.assertClean()
	})
}

func TestGCRemovesWhatIsNotValid(t *testing.T) {
	h := newHarness(t)
	l := h.list("1.1.0")
	keep, stale, orphan := h.newPod("keep"), h.newPod("stale"), h.newPod("orphan")
	for _, p := range []pod{keep, stale, orphan} {
		if _, err := h.add(l, p); err != nil {
			t.Fatal(err)
		}
	}
	// orphan's row is lost: GC must still find its veth on the bridge.
	db, err := store.Open(context.Background(), h.db)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.DeletePod(context.Background(), orphan.id, "eth0"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := h.gc(l, keep); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if v := h.hostVeths(); len(v) != 1 || v[0] != link.HostVethName(keep.id, "eth0") {
		t.Fatalf("veths after GC: %v", v)
	}
	if rows := h.pods(); len(rows) != 1 || rows[0].ContainerID != keep.id {
		t.Fatalf("rows after GC: %+v", rows)
	}
	res := h.reservations()
	if len(res) != 1 {
		t.Fatalf("reservations after GC: %v", res)
	}
	for _, owner := range res {
		if owner != keep.id+"/eth0" {
			t.Fatalf("GC kept %s's reservation", owner)
		}
	}
	if err := h.check(l, keep); err != nil {
		t.Fatalf("CHECK of the kept pod: %v", err)
	}
	// Empty list: everything of this network goes.
	if err := h.gc(l); err != nil {
		t.Fatal(err)
	}
	h.assertClean()
}

// agentServer serves /readyz with status code on a unix socket.
func agentServer(t *testing.T, code int) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			w.WriteHeader(code)
		case localapi.PathEndpointSync: // ADD waits for the pod's policy (policy_test.go)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintln(w, `{"enforced":true}`)
		case localapi.PathEndpointRemove:
			w.WriteHeader(http.StatusNoContent)
		default:
			http.NotFound(w, r)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestStatus(t *testing.T) {
	h := newHarness(t)
	file := filepath.Join(h.dir, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(p map[string]any)
		code   uint // 0: available
	}{
		{"fresh node without bridge", func(map[string]any) {}, 0},
		{"database not writable", func(p map[string]any) { p["sdwan"].(map[string]any)["database"] = filepath.Join(file, "k8s.db") }, types.ErrPluginNotAvailable},
		{"IPAM data dir not writable", func(p map[string]any) { p["ipam"].(map[string]any)["dataDir"] = filepath.Join(file, "ipam") }, types.ErrPluginNotAvailable},
		{"delegated IPAM", func(p map[string]any) { p["ipam"].(map[string]any)["type"] = "host-local-exec" }, 0},
		{"policy on, agent absent", func(p map[string]any) {
			s := p["sdwan"].(map[string]any)
			s["enable_policy_enforcement"] = true
			s["agent_socket"] = filepath.Join(h.dir, "no-agent.sock")
		}, types.ErrPluginNotAvailable},
		{"policy on, agent not ready", func(p map[string]any) {
			s := p["sdwan"].(map[string]any)
			s["enable_policy_enforcement"] = true
			s["agent_socket"] = agentServer(t, http.StatusServiceUnavailable)
		}, types.ErrPluginNotAvailable},
		{"policy on, agent ready", func(p map[string]any) {
			s := p["sdwan"].(map[string]any)
			s["enable_policy_enforcement"] = true
			s["agent_socket"] = agentServer(t, http.StatusOK)
		}, 0},
		{"policy off, agent absent", func(p map[string]any) {
			p["sdwan"].(map[string]any)["agent_socket"] = filepath.Join(h.dir, "no-agent.sock")
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := h.plugin()
			tc.mutate(p)
			err := h.status(h.list("1.1.0", p))
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("want available, got %v", err)
				}
				return
			}
			var te *types.Error
			if !errors.As(err, &te) || te.Code != tc.code {
				t.Fatalf("want CNI error %d, got %v", tc.code, err)
			}
		})
	}
}

func TestParallelAddDel(t *testing.T) {
	const n = 50
	h := newHarness(t)
	l := h.list("1.1.0")
	pods := make([]pod, n)
	for i := range pods {
		pods[i] = h.newPod("par" + string(rune('a'+i%26)) + string(rune('a'+i/26)))
	}
	ips := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := h.add(l, pods[i])
			errs[i] = err
			if err == nil {
				a, _ := netip.AddrFromSlice(r.current(t).IPs[0].Address.IP)
				ips[i] = a.Unmap()
			}
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, err := range errs {
		if err != nil {
			t.Errorf("ADD %d: %v", i, err)
			continue
		}
		if j, dup := seen[ips[i]]; dup {
			t.Errorf("pods %d and %d both got %s", j, i, ips[i])
		}
		seen[ips[i]] = i
	}
	if t.Failed() {
		t.FailNow()
	}
	if v, r, p := len(h.hostVeths()), len(h.reservations()), len(h.pods()); v != n || r != n || p != n {
		t.Fatalf("after %d ADDs: %d veths, %d reservations, %d rows", n, v, r, p)
	}
	// The plugin exits without closing the database (closeDB): 50 such exits leave it
	// intact, every row visible to the next opener.
	db, err := store.Open(context.Background(), h.db)
	if err != nil {
		t.Fatal(err)
	}
	var integrity string
	if err := db.SQL().QueryRow(`PRAGMA integrity_check`).Scan(&integrity); err != nil || integrity != "ok" {
		t.Fatalf("integrity_check after %d concurrent ADDs: %q, %v", n, integrity, err)
	}
	db.Close()
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.del(l, pods[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %d: %v", i, err)
		}
	}
	// 100 commits by processes that exit without closing: the WAL stays bounded (the
	// plugin truncates it past 256 KiB; unbounded it would be ~1.2 MB here).
	if fi, err := os.Stat(h.db + "-wal"); err == nil && fi.Size() > 512<<10 {
		t.Errorf("WAL grew to %d bytes", fi.Size())
	}
	h.assertClean()
}

func TestChaining(t *testing.T) {
	for _, tc := range []struct {
		name string
		next map[string]any
		caps map[string]any
	}{
		{"bandwidth", map[string]any{"type": "bandwidth", "capabilities": map[string]any{"bandwidth": true}},
			map[string]any{"bandwidth": map[string]any{"ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000}}},
		{"portmap", map[string]any{"type": "portmap", "backend": "nftables", "capabilities": map[string]any{"portMappings": true}},
			map[string]any{"portMappings": []any{map[string]any{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			l := h.list("1.1.0", h.plugin(), tc.next)
			p := h.newPod("chain")
			p.rt.CapabilityArgs = tc.caps
			r, err := h.add(l, p)
			if err != nil {
				t.Fatalf("chained ADD: %v", err)
			}
			podIP(t, r, p)
			if err := h.check(l, p); err != nil {
				t.Fatalf("chained CHECK: %v", err)
			}
			if tc.name == "bandwidth" {
				// bandwidth found our host veth through prevResult and shaped it.
				var qdiscs []netlink.Qdisc
				h.inNode(func() error {
					hl, err := netlink.LinkByName(link.HostVethName(p.id, "eth0"))
					if err != nil {
						return err
					}
					qdiscs, err = netlink.QdiscList(hl)
					return err
				})
				found := false
				for _, q := range qdiscs {
					found = found || q.Type() == "tbf"
				}
				if !found {
					t.Fatalf("no tbf qdisc on the host veth: %v", qdiscs)
				}
			}
			if err := h.del(l, p); err != nil {
				t.Fatalf("chained DEL: %v", err)
			}
			h.assertClean()
		})
	}
}

func TestDelegatedIPAMSharesHostLocalState(t *testing.T) {
	h := newHarness(t)
	delegated := h.plugin()
	delegated["ipam"].(map[string]any)["type"] = "host-local-exec"
	ld, li := h.list("1.1.0", delegated), h.list("1.1.0")
	a, b := h.newPod("exec"), h.newPod("inproc")
	ra, err := h.add(ld, a)
	if err != nil {
		t.Fatalf("ADD with delegated IPAM: %v", err)
	}
	rb, err := h.add(li, b)
	if err != nil {
		t.Fatal(err)
	}
	if ipA, ipB := podIP(t, ra, a), podIP(t, rb, b); ipA == ipB {
		t.Fatalf("in-process allocator reused %s reserved by the host-local binary", ipA)
	}
	ping(t, a, podIP(t, rb, b))
	if err := h.check(ld, a); err != nil {
		t.Fatalf("CHECK with delegated IPAM: %v", err)
	}
	// GC through the delegated plugin drops b's reservation (and b's veth and row).
	if err := h.gc(ld, a); err != nil {
		t.Fatal(err)
	}
	if res := h.reservations(); len(res) != 1 {
		t.Fatalf("reservations after delegated GC: %v", res)
	}
	if err := h.del(ld, a); err != nil {
		t.Fatal(err)
	}
	if err := h.del(li, b); err != nil {
		t.Fatal(err)
	}
	h.assertClean()
}

func TestDualStack(t *testing.T) {
	h := newHarness(t)
	p := h.plugin()
	ipam := p["ipam"].(map[string]any)
	delete(ipam, "subnet")
	delete(ipam, "rangeStart")
	delete(ipam, "rangeEnd")
	delete(ipam, "gateway")
	ipam["ranges"] = []any{
		[]any{map[string]any{"subnet": "10.244.0.0/16"}},
		[]any{map[string]any{"subnet": "fd00:244::/64"}},
	}
	ipam["routes"] = []any{map[string]any{"dst": "0.0.0.0/0"}, map[string]any{"dst": "::/0"}}
	l := h.list("1.1.0", p)
	a, b := h.newPod("v6a"), h.newPod("v6b")
	ra, err := h.add(l, a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.add(l, b); err != nil {
		t.Fatal(err)
	}
	res := ra.current(t)
	if len(res.IPs) != 2 || res.IPs[1].Address.IP.To4() != nil {
		t.Fatalf("want an IPv4 and an IPv6 address: %+v", res.IPs)
	}
	if out, err := podExec(t, b.netns, "ping", "-6", "-c", "1", "-W", "2", res.IPs[1].Address.IP.String()); err != nil {
		t.Fatalf("ping6 between pods: %v\n%s", err, out)
	}
	if out, err := podExec(t, a.netns, "ping", "-6", "-c", "1", "-W", "2", "fd00:244::1"); err != nil {
		t.Fatalf("ping6 gateway: %v\n%s", err, out)
	}
	if err := h.check(l, a); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	for _, p := range []pod{a, b} {
		if err := h.del(l, p); err != nil {
			t.Fatal(err)
		}
	}
	h.assertClean()
}

// TestShippedConflist runs the conflist install-cni writes (manifests/10-patronus.conflist),
// with only its paths moved into the test's directory: libcni picks 1.1.0 from cniVersions,
// policy enforcement is on, so STATUS follows the agent's /readyz.
func TestShippedConflist(t *testing.T) {
	h := newHarness(t)
	var m map[string]any
	if err := json.Unmarshal(manifests.ConfList, &m); err != nil {
		t.Fatal(err)
	}
	entry := m["plugins"].([]any)[0].(map[string]any)
	entry["ipam"].(map[string]any)["dataDir"] = h.dataDir
	sd := entry["sdwan"].(map[string]any)
	sd["database"] = h.db
	if sd["enable_policy_enforcement"] != true {
		t.Fatalf("the shipped conflist should enforce policy: %v", sd)
	}
	h.network = m["name"].(string)
	sd["agent_socket"] = filepath.Join(h.dir, "absent.sock")
	b, _ := json.Marshal(m)
	l, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if l.CNIVersion != "1.1.0" {
		t.Fatalf("libcni chose cniVersion %s from %v", l.CNIVersion, m["cniVersions"])
	}
	var te *types.Error
	if err := h.status(l); !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS without the agent: want 50, got %v", err)
	}
	sd["agent_socket"] = agentServer(t, http.StatusOK)
	b, _ = json.Marshal(m)
	if l, err = libcni.NetworkConfFromBytes(b); err != nil {
		t.Fatal(err)
	}
	if err := h.status(l); err != nil {
		t.Fatalf("STATUS with a ready agent: %v", err)
	}
	p := h.newPod("shipped")
	r, err := h.add(l, p)
	if err != nil {
		t.Fatal(err)
	}
	res := r.current(t)
	if len(res.IPs) != 1 || !netip.MustParsePrefix("10.244.0.0/16").Contains(netip.MustParseAddr(res.IPs[0].Address.IP.String())) {
		t.Fatalf("result %+v", res.IPs)
	}
	if err := h.check(l, p); err != nil {
		t.Fatal(err)
	}
	if err := h.del(l, p); err != nil {
		t.Fatal(err)
	}
	h.assertClean()
}

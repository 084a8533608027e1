package route

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
)

func TestNetlinkSetAndRestore(t *testing.T) {
	enforcetest.RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "pt-rt-" + hex.EncodeToString(b)
	n := enforcetest.NewNS(t, name)
	err := n.Do(func(ns.NetNS) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0"}, PeerName: "ul1"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		for _, l := range []string{"ul0", "ul1"} {
			link, _ := netlink.LinkByName(l)
			if err := netlink.LinkSetUp(link); err != nil {
				return err
			}
		}
		link, _ := netlink.LinkByName("ul0")
		a, _ := netlink.ParseAddr("192.168.7.1/24")
		return netlink.AddrAdd(link, a)
	})
	if err != nil {
		t.Fatal(err)
	}
	ipr := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"-n", name}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	// A foreign route (another protocol) in the same table must survive every Set.
	ipr("route", "add", "10.1.0.0/16", "via", "192.168.7.2")

	k, err := NewNetlinkKernel(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := k.Subscribe(ctx.Done())
	if err != nil {
		t.Fatal(err)
	}
	r := NewRouter(Options{Kernel: k, Events: events, Resync: time.Hour})
	go r.Run(ctx)

	d := Desired{
		Routes: []Route{
			{Dst: netip.MustParsePrefix("10.248.0.0/16"), Dev: "ul1"},
			{Dst: netip.MustParsePrefix("10.249.0.0/16"), Dev: "ul0", Via: netip.MustParseAddr("192.168.7.2")},
			{Dst: netip.MustParsePrefix("10.250.0.0/16"), Dev: "ul0", Table: 100},
		},
		Rules: []Rule{{Priority: 1000, Dst: netip.MustParsePrefix("10.250.0.0/16"), Table: 100}},
	}
	res, err := r.Set(d)
	if err != nil || len(res.Added) != 3 || len(res.RulesAdded) != 1 {
		t.Fatalf("first Set: %+v %v", res, err)
	}
	if out := ipr("route", "show", "proto", "77"); !strings.Contains(out, "10.248.0.0/16 dev ul1") || !strings.Contains(out, "10.249.0.0/16 via 192.168.7.2 dev ul0") {
		t.Fatalf("routes:\n%s", out)
	}
	if out := ipr("rule", "show"); !strings.Contains(out, "1000:") || !strings.Contains(out, "lookup 100") {
		t.Fatalf("rules:\n%s", out)
	}
	if res, err := r.Set(d); err != nil || !res.Empty() {
		t.Fatalf("second Set of the same state: %+v %v", res, err)
	}
	// Deleted behind our back: the route subscription restores it.
	ipr("route", "del", "10.248.0.0/16")
	waitFor(t, func() bool { return strings.Contains(ipr("route", "show", "proto", "77"), "10.248.0.0/16") }, "route re-added after deletion")
	// The link goes down (the kernel drops its routes) and comes back: routes come back.
	ipr("link", "set", "ul1", "down")
	ipr("link", "set", "ul1", "up")
	waitFor(t, func() bool { return strings.Contains(ipr("route", "show", "proto", "77"), "10.248.0.0/16 dev ul1") }, "route re-added after link flap")
	// Withdraw: only owned routes go, the foreign one stays.
	d.Routes, d.Rules = d.Routes[1:2], nil
	res, err = r.Set(d)
	if err != nil || len(res.Removed) != 2 || len(res.RulesRemoved) != 1 {
		t.Fatalf("withdraw: %+v %v", res, err)
	}
	out := ipr("route", "show", "table", "all")
	if strings.Contains(out, "10.248.0.0/16") || strings.Contains(out, "10.250.0.0/16") || !strings.Contains(out, "10.1.0.0/16 via 192.168.7.2") {
		t.Fatalf("after withdraw:\n%s", out)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

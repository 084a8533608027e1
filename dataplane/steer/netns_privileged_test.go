package steer

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/patronus/patronus/dataplane/enforce/enforcetest"
)

// Program writes the chain, the fwmark rules and the per-path tables into a namespace,
// replaces them when the plan changes, and Remove leaves nothing of its own behind (and
// nothing of anyone else's touched). The traffic itself is tested in integration/paths.
func TestNetlinkProgram(t *testing.T) {
	enforcetest.RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	n := enforcetest.NewNS(t, "pt-steer-"+hex.EncodeToString(b))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(n.Do(func(ns.NetNS) error {
		for _, name := range []string{"p1", "p2"} {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "x"}); err != nil {
				return err
			}
			l, _ := netlink.LinkByName(name)
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		// Someone else's rule and table, which must survive.
		r := netlink.NewRule()
		r.Priority, r.Table, r.Mark = RulePriority, 100, 0x1
		return netlink.RuleAdd(r)
	}))
	k := Netlink{NetNS: n.Path()}
	spec := Spec{
		Paths:        []Path{{ID: "a", Dst: "b", Dev: "p1", Up: true}, {ID: "b", Dst: "b", Dev: "p2", Up: true}},
		Destinations: map[string][]netip.Prefix{"b": {netip.MustParsePrefix("10.82.0.0/16"), netip.MustParsePrefix("10.83.0.0/16")}},
		Pods:         []Pod{{Name: "x", IP: netip.MustParseAddr("10.81.0.5"), Via: map[string]string{"b": "b"}}},
	}
	plan, err := NewPlan(spec)
	must(err)
	must(k.Program(plan))
	must(k.Program(plan)) // idempotent
	check := func(stage string, wantRules, wantRoutes, wantChainRules int) {
		t.Helper()
		must(n.Do(func(ns.NetNS) error {
			rules, err := netlink.RuleList(netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			own, foreign := 0, 0
			for _, r := range rules {
				switch {
				case r.Priority == RulePriority && ownedTable(r.Table):
					own++
					if r.Mask == nil || *r.Mask != PathMask || r.Table != TableBase+int(r.Mark>>16) {
						t.Errorf("%s: rule %+v", stage, r)
					}
				case r.Table == 100:
					foreign++
				}
			}
			routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol},
				netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
			if err != nil {
				return err
			}
			if own != wantRules || foreign != 1 || len(routes) != wantRoutes {
				t.Errorf("%s: %d own rules (want %d), %d foreign (want 1), %d routes (want %d)", stage, own, wantRules, foreign, len(routes), wantRoutes)
			}
			return nil
		}))
		f, err := os.Open(n.Path())
		must(err)
		defer f.Close()
		c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
		must(err)
		tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
		ch, err := c.ListChain(tbl, Chain)
		if wantChainRules < 0 {
			if err == nil {
				t.Errorf("%s: chain %s still there", stage, Chain)
			}
			return
		}
		must(err)
		rs, err := c.GetRules(tbl, ch)
		must(err)
		if len(rs) != wantChainRules {
			t.Errorf("%s: %d rules in chain %s, want %d", stage, len(rs), Chain, wantChainRules)
		}
	}
	// 2 paths: 2 ingress + 2 keep rules, 2 prefixes × 1 pod.
	check("two paths", 2, 4, 6)

	spec.Paths = spec.Paths[1:]
	spec.Paths[0].Up = false
	plan, err = NewPlan(spec)
	must(err)
	must(k.Program(plan))
	// One path now (mark 1, table 7901), down: no keep rule.
	check("one path down", 1, 2, 3)

	must(k.Remove())
	check("removed", 0, 0, -1)
}

package cni

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	// Test-only: the upstream allocator is the reference the in-process one must agree
	// with (the binary does not link it).
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

func hlConf(ipam string) []byte {
	return []byte(`{"cniVersion":"1.0.0","name":"net1","type":"patronus-cni","ipam":{"type":"host-local",` + ipam + `}}`)
}

// TestParseHostLocalAgreesWithUpstream: every configuration is accepted or rejected as
// host-local's own parser does, with the same canonical ranges.
func TestParseHostLocalAgreesWithUpstream(t *testing.T) {
	cases := []struct {
		name, ipam, ipArg string
		conf              string // a whole configuration instead of ipam
	}{
		{name: "single-range form", ipam: `"subnet":"10.1.0.0/24"`},
		{name: "single-range form with bounds", ipam: `"subnet":"10.1.0.0/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.20","gateway":"10.1.0.254"`},
		{name: "ranges", ipam: `"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.2.0.0/24"}],[{"subnet":"fd00::/64"}]]`},
		{name: "IPv6 end is the last address", ipam: `"ranges":[[{"subnet":"fd00::/120"}]]`},
		{name: "single form and ranges", ipam: `"subnet":"10.1.0.0/24","ranges":[[{"subnet":"10.2.0.0/24"}]]`},
		{name: "routes and data dir", ipam: `"subnet":"10.1.0.0/16","routes":[{"dst":"0.0.0.0/0"}],"dataDir":"/tmp/x"`},
		{name: "requested by CNI_ARGS", ipam: `"subnet":"10.1.0.0/24"`, ipArg: "IP=10.1.0.7"},
		{name: "requested by args", conf: `{"cniVersion":"1.0.0","name":"n","args":{"cni":{"ips":["10.1.0.9"]}},"ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}`},
		{name: "requested by runtimeConfig", conf: `{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["10.1.0.9/24"]},"ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}`},
		{name: "runtimeConfig ipRanges first", conf: `{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ipRanges":[[{"subnet":"10.9.0.0/24"}]]},"ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}`},
		{name: "no ranges", ipam: `"routes":[]`},
		{name: "host bits set", ipam: `"subnet":"10.1.0.1/24"`},
		{name: "too small", ipam: `"subnet":"10.1.0.0/31"`},
		{name: "gateway outside", ipam: `"subnet":"10.1.0.0/24","gateway":"10.2.0.1"`},
		{name: "start outside", ipam: `"subnet":"10.1.0.0/24","rangeStart":"10.1.1.1"`},
		{name: "start after end", ipam: `"subnet":"10.1.0.0/24","rangeStart":"10.1.0.20","rangeEnd":"10.1.0.10"`},
		{name: "overlap in a set", ipam: `"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.1.0.0/16"}]]`},
		{name: "overlap across sets", ipam: `"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.1.0.0/25"}]]`},
		{name: "mixed families in a set", ipam: `"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"fd00::/64"}]]`},
		{name: "not a CIDR", ipam: `"subnet":"10.1.0.0"`},
		{name: "bad requested address", ipam: `"subnet":"10.1.0.0/24"`, ipArg: "IP=10.1.0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw := hlConf(c.ipam)
			if c.conf != "" {
				raw = []byte(c.conf)
			}
			ours, err := parseHostLocal(raw, c.ipArg)
			ref, _, refErr := allocator.LoadIPAMConfig(raw, c.ipArg)
			if (err == nil) != (refErr == nil) {
				t.Fatalf("ours: %v, host-local: %v", err, refErr)
			}
			if err != nil {
				return
			}
			if ours.Network != ref.Name || ours.DataDir != ref.DataDir || len(ours.Routes) != len(ref.Routes) {
				t.Errorf("network/dataDir/routes: ours %q %q %d, host-local %q %q %d", ours.Network, ours.DataDir, len(ours.Routes), ref.Name, ref.DataDir, len(ref.Routes))
			}
			if got, want := fmt.Sprint(ours.Requested), fmt.Sprint(addrsOf(ref.IPArgs)); got != want {
				t.Errorf("requested: ours %s, host-local %s", got, want)
			}
			if len(ours.Ranges) != len(ref.Ranges) {
				t.Fatalf("%d range sets, host-local %d", len(ours.Ranges), len(ref.Ranges))
			}
			for i, set := range ours.Ranges {
				if len(set) != len(ref.Ranges[i]) {
					t.Fatalf("range set %d: %d ranges, host-local %d", i, len(set), len(ref.Ranges[i]))
				}
				for k, r := range set {
					rr := ref.Ranges[i][k]
					got := fmt.Sprintf("%s %s-%s gw %s", r.Subnet, r.Start, r.End, r.Gateway)
					want := fmt.Sprintf("%s %s-%s gw %s", (*net.IPNet)(&rr.Subnet), rr.RangeStart, rr.RangeEnd, rr.Gateway)
					if got != want {
						t.Errorf("range %d/%d: ours %s, host-local %s", i, k, got, want)
					}
				}
			}
		})
	}
}

func addrsOf(ips []net.IP) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		a, _ := netip.AddrFromSlice(ip)
		out = append(out, a.Unmap())
	}
	return out
}

func openStore(t *testing.T, c *hostLocalConf) *disk.Store {
	t.Helper()
	s, err := disk.New(c.Network, c.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustParseHL(t *testing.T, ipam, dir string) *hostLocalConf {
	t.Helper()
	c, err := parseHostLocal(hlConf(ipam+`,"dataDir":"`+dir+`"`), "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAllocateSameOrderAsUpstream allocates and releases in the same pattern with the
// in-process code and with host-local's allocator, each in its own data dir: the same
// addresses must come out, in the same order (round robin from the last reservation,
// gateway skipped, wrap-around across ranges, exhaustion).
func TestAllocateSameOrderAsUpstream(t *testing.T) {
	const ipam = `"ranges":[[{"subnet":"10.1.0.0/29"},{"subnet":"10.1.1.0/30","gateway":"10.1.1.2"}]]`
	ours := mustParseHL(t, ipam, t.TempDir())
	refDir := t.TempDir()
	ref, _, perr := allocator.LoadIPAMConfig(hlConf(ipam+`,"dataDir":"`+refDir+`"`), "")
	if perr != nil {
		t.Fatal(perr)
	}
	ourStore := openStore(t, ours)
	rs, err := disk.New(ref.Name, refDir)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	refAlloc := allocator.NewIPAllocator(&ref.Ranges[0], rs, 0)

	// 10.1.0.0/29 gives .1 (gateway) .. .6; 10.1.1.0/30 gives .1, .2 (gateway): 6 addresses.
	step := func(op string, n int) {
		id := fmt.Sprintf("c%d", n)
		switch op {
		case "add":
			got, gerr := ours.allocate(ourStore, id, "eth0")
			want, werr := refAlloc.Get(id, "eth0", nil)
			if (gerr == nil) != (werr == nil) {
				t.Fatalf("add %s: ours %v, host-local %v", id, gerr, werr)
			}
			if gerr == nil && (got[0].Address.String() != want.Address.String() || !got[0].Gateway.Equal(want.Gateway)) {
				t.Fatalf("add %s: ours %s gw %s, host-local %s gw %s", id, &got[0].Address, got[0].Gateway, &want.Address, want.Gateway)
			}
		case "del":
			if err := ourStore.ReleaseByID(id, "eth0"); err != nil {
				t.Fatal(err)
			}
			if err := refAlloc.Release(id, "eth0"); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < 3; i++ {
		step("add", i)
	}
	step("del", 0)
	step("add", 3) // round robin: after the last reserved, not the freed one
	for i := 4; i < 7; i++ {
		step("add", i) // into the second range, then wrapping to the freed one
	}
	step("add", 7) // exhausted: both fail
	step("del", 2)
	step("del", 4)
	step("add", 8)
	step("add", 9)
	step("add", 10) // exhausted again
}

func TestAllocateRules(t *testing.T) {
	dir := t.TempDir()
	c := mustParseHL(t, `"ranges":[[{"subnet":"10.5.0.0/24"}],[{"subnet":"fd05::/120"}]]`, dir)
	s := openStore(t, c)
	got, err := c.allocate(s, "a", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Address.String() != "10.5.0.2/24" || got[0].Gateway.String() != "10.5.0.1" ||
		got[1].Address.String() != "fd05::2/120" || got[1].Gateway.String() != "fd05::1" {
		t.Fatalf("dual-stack allocation: %v", got)
	}
	// The same attachment again: refused, nothing new reserved.
	if _, err := c.allocate(s, "a", "eth0"); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Fatalf("second ADD of the same attachment: %v, want a duplicate allocation error", err)
	}
	// Files written by old host-local versions (id only) count as the attachment's too.
	if err := os.WriteFile(filepath.Join(c.dir(), "10.5.0.50"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.allocate(s, "old", "eth0"); err == nil {
		t.Fatal("an id-only reservation of the container was not seen")
	}

	// Requested addresses.
	c.Requested = []netip.Addr{netip.MustParseAddr("10.5.0.77"), netip.MustParseAddr("fd05::77")}
	got, err = c.allocate(s, "b", "eth0")
	if err != nil || got[0].Address.IP.String() != "10.5.0.77" || got[1].Address.IP.String() != "fd05::77" {
		t.Fatalf("requested addresses: %v, %v", got, err)
	}
	for _, tc := range []struct {
		req  string
		want string
	}{
		{"10.5.0.77", "not available"},   // taken by b
		{"10.5.0.1", "gateway"},          // the gateway
		{"10.6.0.1", "in no configured"}, // outside every range
	} {
		c.Requested = []netip.Addr{netip.MustParseAddr(tc.req)}
		if _, err := c.allocate(s, "c-"+tc.req, "eth0"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("request %s: %v, want an error containing %q", tc.req, err, tc.want)
		}
		// A failed allocation leaves no reservation behind (the IPv6 set was reserved
		// before the request failed).
		if ips, _ := reservedBy(c.dir(), "c-"+tc.req, "eth0"); len(ips) != 0 {
			t.Errorf("request %s: failed allocation left %v reserved", tc.req, ips)
		}
	}
}

func TestLastAddr(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.0/24": "10.0.0.254", "10.0.0.0/30": "10.0.0.2", "10.0.0.0/8": "10.255.255.254",
		"fd00::/64": "fd00::ffff:ffff:ffff:ffff", "fd00::/126": "fd00::3", "10.0.0.0/23": "10.0.1.254",
	} {
		if got := lastAddr(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("lastAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestRelease(t *testing.T) {
	c := mustParseHL(t, `"ranges":[[{"subnet":"10.7.0.0/24"}],[{"subnet":"fd07::/120"}]]`, t.TempDir())
	s := openStore(t, c)
	for _, id := range []string{"a", "b"} {
		if _, err := c.allocate(s, id, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	// An id-only file (old host-local) of the same container goes too.
	if err := os.WriteFile(filepath.Join(c.dir(), "10.7.0.99"), []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.release(s, "a", "eth0"); err != nil {
		t.Fatal(err)
	}
	if got, _ := reservedBy(c.dir(), "a", "eth0"); len(got) != 0 {
		t.Errorf("after release, a still holds %v", got)
	}
	if got, _ := reservedBy(c.dir(), "b", "eth0"); len(got) != 2 {
		t.Errorf("release of a touched b: b holds %v", got)
	}
	// Releasing again, or in a data dir that does not exist yet, succeeds (DEL is idempotent).
	if err := c.release(s, "a", "eth0"); err != nil {
		t.Errorf("second release: %v", err)
	}
	other := mustParseHL(t, `"subnet":"10.8.0.0/24"`, filepath.Join(t.TempDir(), "missing"))
	if err := other.release(s, "a", "eth0"); err != nil {
		t.Errorf("release in a missing data dir: %v", err)
	}
}

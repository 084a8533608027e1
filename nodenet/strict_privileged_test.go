package nodenet

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// strictNS makes an empty named namespace, removed at cleanup.
func strictNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and nftables chains in it")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (apt-get install nftables) to read the chain back")
	}
	buf := make([]byte, 4)
	rand.Read(buf)
	name := "pt-nns-" + hex.EncodeToString(buf)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	h, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("restore namespace: %v", serr) // thread stays locked: never reused
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	t.Cleanup(func() { netns.DeleteNamed(name) })
	return name
}

func nftList(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	return string(out)
}

// SetStrict writes the chain nft shows, leaves it alone when asked again, rewrites it
// for another block, keeps the masquerade chain of the same table, and removes only its
// own chain when strict goes off.
func TestSetStrictKernel(t *testing.T) {
	ns := strictNS(t)
	dp, err := OpenDatapath("/var/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	sd := dp.(StrictDatapath)
	if err := dp.SetMasquerade(Masquerade{Sources: []netip.Prefix{pfx("10.244.1.0/24")}, Cluster: []netip.Prefix{pfx("10.244.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	s := Strict{Sources: []netip.Prefix{pfx("10.244.1.0/24")}, Guarded: StrictDestinations([]netip.Prefix{pfx("10.244.0.0/22")}, pfx("10.244.1.0/24"), nil), Device: WGDevice}
	if _, err := sd.SetStrict(s); err != nil {
		t.Fatal(err)
	}
	rs := nftList(t, ns)
	for _, want := range []string{
		"chain nodenet-strict {",
		"type filter hook forward priority filter; policy accept;",
		`ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/24 oifname != "ptw0" counter packets 0 bytes 0 drop`,
		`ip saddr 10.244.1.0/24 ip daddr 10.244.2.0/23 oifname != "ptw0" counter packets 0 bytes 0 drop`,
		"chain nodenet-masq {",
	} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	handles := func() string {
		out, _ := exec.Command("ip", "netns", "exec", ns, "nft", "-a", "list", "chain", "inet", "patronus", DefaultStrictChain).CombinedOutput()
		return string(out)
	}
	before := handles()
	if _, err := sd.SetStrict(s); err != nil {
		t.Fatal(err)
	}
	if after := handles(); after != before {
		t.Fatalf("the same chain rewritten:\n%s\nthen\n%s", before, after)
	}
	s.Sources = []netip.Prefix{pfx("10.244.2.0/24")}
	s.Guarded = StrictDestinations([]netip.Prefix{pfx("10.244.0.0/22")}, pfx("10.244.2.0/24"), nil)
	if _, err := sd.SetStrict(s); err != nil {
		t.Fatal(err)
	}
	if rs := nftList(t, ns); strings.Contains(rs, "saddr 10.244.1.0/24 ip daddr 10.") || !strings.Contains(rs, `ip saddr 10.244.2.0/24 ip daddr 10.244.3.0/24 oifname != "ptw0"`) {
		t.Fatalf("not rewritten for the new block:\n%s", rs)
	}
	if _, err := sd.SetStrict(Strict{}); err != nil {
		t.Fatal(err)
	}
	if rs := nftList(t, ns); strings.Contains(rs, DefaultStrictChain) || !strings.Contains(rs, "chain nodenet-masq {") {
		t.Fatalf("strict off: want only the masquerade chain left:\n%s", rs)
	}
	if _, err := sd.SetStrict(Strict{}); err != nil { // nothing to remove
		t.Fatal(err)
	}
}

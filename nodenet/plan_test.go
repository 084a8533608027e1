package nodenet

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patronus/patronus/manifests"
	"github.com/patronus/patronus/store"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

func TestCompute(t *testing.T) {
	local := Local{Name: "n1", Addr: ip("192.168.77.1"), Net: pfx("192.168.77.0/24"), Dev: "eth0", Block: pfx("10.244.1.0/24")}
	for _, tc := range []struct {
		name      string
		local     Local
		peers     []Peer
		routes    []string
		vxlan     bool
		fdb       []string
		conflicts int
	}{
		{name: "direct", local: local, peers: []Peer{
			{Name: "n2", Addr: ip("192.168.77.2"), Blocks: []netip.Prefix{pfx("10.244.2.0/24")}},
			{Name: "n3", Addr: ip("192.168.77.3"), Blocks: []netip.Prefix{pfx("10.244.3.0/24")}},
		}, routes: []string{"10.244.2.0/24 via 192.168.77.2 dev eth0", "10.244.3.0/24 via 192.168.77.3 dev eth0"}},
		{name: "other subnet over vxlan", local: local, peers: []Peer{
			{Name: "n4", Addr: ip("192.168.78.4"), Blocks: []netip.Prefix{pfx("10.244.4.0/24")}},
		}, routes: []string{"10.244.4.0/24 via 10.244.4.0 dev ptx0 onlink"}, vxlan: true, fdb: []string{"0e:70:c0:a8:4e:04 192.168.78.4"}},
		{name: "self, no address and no block skipped", local: local, peers: []Peer{
			{Name: "n1", Addr: ip("192.168.77.1"), Blocks: []netip.Prefix{pfx("10.244.9.0/24")}},
			{Name: "n5", Blocks: []netip.Prefix{pfx("10.244.5.0/24")}},
			{Name: "n6", Addr: ip("192.168.77.6")},
		}},
		{name: "overlaps: local block and earlier peer win", local: local, peers: []Peer{
			{Name: "b", Addr: ip("192.168.77.3"), Blocks: []netip.Prefix{pfx("10.244.2.0/24")}},
			{Name: "a", Addr: ip("192.168.77.2"), Blocks: []netip.Prefix{pfx("10.244.2.0/24")}},
			{Name: "c", Addr: ip("192.168.77.4"), Blocks: []netip.Prefix{pfx("10.244.1.0/25")}},
			{Name: "d", Addr: ip("192.168.77.5"), Blocks: []netip.Prefix{pfx("10.244.0.0/16"), pfx("10.245.0.0/24")}},
		}, routes: []string{"10.244.2.0/24 via 192.168.77.2 dev eth0", "10.245.0.0/24 via 192.168.77.5 dev eth0"}, conflicts: 3},
		{name: "vxlan needs own block", local: Local{Name: "n1", Addr: ip("192.168.77.1"), Net: pfx("192.168.77.0/24"), Dev: "eth0"}, peers: []Peer{
			{Name: "n4", Addr: ip("192.168.78.4"), Blocks: []netip.Prefix{pfx("10.244.4.0/24")}},
			{Name: "n2", Addr: ip("192.168.77.2"), Blocks: []netip.Prefix{pfx("10.244.2.0/24")}},
		}, routes: []string{"10.244.2.0/24 via 192.168.77.2 dev eth0"}, conflicts: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Compute(tc.local, tc.peers)
			var routes []string
			for _, r := range p.Routes {
				routes = append(routes, r.String())
			}
			if strings.Join(routes, "|") != strings.Join(tc.routes, "|") {
				t.Errorf("routes %q, want %q", routes, tc.routes)
			}
			if p.VXLAN != tc.vxlan {
				t.Errorf("vxlan %v", p.VXLAN)
			}
			var fdb []string
			for _, f := range p.FDB {
				fdb = append(fdb, f.MAC+" "+f.Dst.String())
			}
			if strings.Join(fdb, "|") != strings.Join(tc.fdb, "|") {
				t.Errorf("fdb %q, want %q", fdb, tc.fdb)
			}
			if p.VXLAN && (p.VTEPAddr != ip("10.244.1.0") || p.VTEPMAC != "0e:70:c0:a8:4d:01" || len(p.Neighs) != len(p.FDB)) {
				t.Errorf("vtep %v %v neighs %v", p.VTEPAddr, p.VTEPMAC, p.Neighs)
			}
			if len(p.Conflicts) != tc.conflicts {
				t.Errorf("conflicts %q, want %d", p.Conflicts, tc.conflicts)
			}
		})
	}
}

func TestRenderConfList(t *testing.T) {
	out, err := RenderConfList(manifests.ConfList, pfx("10.244.7.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
		Name        string   `json:"name"`
		Plugins     []struct {
			Type   string         `json:"type"`
			Bridge string         `json:"bridge"`
			IPAM   map[string]any `json:"ipam"`
			SDWAN  map[string]any `json:"sdwan"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	p := doc.Plugins[0]
	if doc.CNIVersion != "1.0.0" || len(doc.CNIVersions) != 2 || doc.Name != "patronus-k8s" || p.Bridge != "cni-bridge0" || p.SDWAN["database"] == nil {
		t.Errorf("shape changed: %s", out)
	}
	if p.IPAM["subnet"] != "10.244.7.0/24" || p.IPAM["gateway"] != "10.244.7.1" || p.IPAM["type"] != "host-local" || p.IPAM["routes"] == nil {
		t.Errorf("ipam %v", p.IPAM)
	}
	// ranges form, and stale rangeStart/rangeEnd dropped.
	base := `{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"patronus-cni","ipam":{"type":"host-local","rangeStart":"10.0.0.5","ranges":[[{"subnet":"10.0.0.0/16"}]]}},{"type":"portmap"}]}`
	out, err = RenderConfList([]byte(base), pfx("10.244.8.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if s := string(out); !strings.Contains(s, `"subnet": "10.244.8.0/24"`) || strings.Contains(s, "rangeStart") || strings.Contains(s, "10.0.0.0/16") || !strings.Contains(s, "portmap") {
		t.Errorf("ranges render: %s", s)
	}
	for _, bad := range []string{`{`, `{"plugins":[{"type":"bridge"}]}`, `{"plugins":[{"type":"patronus-cni"}]}`} {
		if _, err := RenderConfList([]byte(bad), pfx("10.244.8.0/24")); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "net.d", "10-patronus.conflist")
	for i, tc := range []struct {
		data    string
		changed bool
	}{{"a", true}, {"a", false}, {"b", true}} {
		changed, err := WriteFileAtomic(path, []byte(tc.data), 0o644)
		if err != nil || changed != tc.changed {
			t.Fatalf("write %d: changed %v err %v", i, changed, err)
		}
		if b, _ := os.ReadFile(path); string(b) != tc.data {
			t.Fatalf("content %q", b)
		}
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestLostPods(t *testing.T) {
	pods := []store.Pod{
		{Namespace: "a", Name: "p1", IPs: []netip.Prefix{pfx("10.244.1.5/24")}},
		{Namespace: "a", Name: "p2", IPs: []netip.Prefix{pfx("10.244.2.5/24")}},
	}
	got := LostPods(pods, pfx("10.244.1.0/24"))
	if len(got) != 1 || got[0].Name != "p1" || got[0].Block != pfx("10.244.1.0/24") {
		t.Errorf("lost %+v", got)
	}
}

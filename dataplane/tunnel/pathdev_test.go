package tunnel

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/mesh/announce"
)

func TestPathRefs(t *testing.T) {
	rcs := []config.RemoteCluster{
		{ID: "b", Endpoint: "192.0.2.2:51820", Paths: []string{"198.51.100.2:51820", "192.0.2.2:51820", "gw.example:51820", "203.0.113.2:40000"}},
		{ID: "c", Endpoint: "192.0.2.4:51820"},
	}
	got := PathRefs(rcs)
	want := []PathRef{
		{Cluster: "b", ID: "b/192.0.2.2", Index: 0, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820")},
		{Cluster: "b", ID: "b/198.51.100.2", Index: 1, Endpoint: netip.MustParseAddrPort("198.51.100.2:51821")},
		// a repeated host is the same path; a DNS name has no endpoint the device can use
		{Cluster: "b", ID: "b/gw.example", Index: 2},
		{Cluster: "b", ID: "b/203.0.113.2", Index: 3, Endpoint: netip.MustParseAddrPort("203.0.113.2:40003")},
		{Cluster: "c", ID: "c/192.0.2.4", Index: 0, Endpoint: netip.MustParseAddrPort("192.0.2.4:51820")},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("PathRefs:\n got %+v\nwant %+v", got, want)
	}
	if n := MaxPathIndex(got); n != 3 {
		t.Fatalf("MaxPathIndex = %d, want 3", n)
	}
	if n := MaxPathIndex(PathRefs(rcs[1:])); n != 0 {
		t.Fatalf("one path per cluster: MaxPathIndex = %d, want 0", n)
	}
}

func TestPathInterfaceName(t *testing.T) {
	for _, tc := range []struct {
		id   string
		k    int
		want string
	}{
		{"lab-c1", 1, "wg1-lab-c1"},
		{"lab-c1", 12, "wg12-lab-c1"},
		{"abcdefghij", 1, "wg1-abcdefghij"},   // 14: fits
		{"abcdefghijk", 1, "wg1-abcdefghijk"}, // 15: fits exactly
	} {
		if got := PathInterfaceName(tc.id, tc.k); got != tc.want {
			t.Errorf("PathInterfaceName(%q, %d) = %q, want %q", tc.id, tc.k, got, tc.want)
		}
	}
	// Too long for the prefix (and longer than the main device allows): a hash, still
	// unique per index and within 15 characters.
	seen := map[string]bool{}
	for _, id := range []string{"abcdefghijkl", "a-very-long-cluster-id", "lab-c1"} {
		for k := 1; k <= MaxPathDevices; k++ {
			n := PathInterfaceName(id, k)
			if len(n) > 15 || seen[n] || n == wg.InterfaceName(id) {
				t.Fatalf("PathInterfaceName(%q, %d) = %q: too long, repeated or the main device's name", id, k, n)
			}
			seen[n] = true
			if got, ok := IsPathInterfaceName(id, n); !ok || got != k {
				t.Fatalf("IsPathInterfaceName(%q, %q) = %d %v", id, n, got, ok)
			}
		}
	}
	if _, ok := IsPathInterfaceName("lab-c1", "wg-lab-c1"); ok {
		t.Fatal("the main device is not a per-path device")
	}
	got := StalePathDevices("lab-c1", []string{"wg-lab-c1", "wg1-lab-c1", "wg2-lab-c1", "wg3-lab-c1", "wg2-lab-c2", "eth0"}, 1)
	if want := []string{"wg2-lab-c1", "wg3-lab-c1"}; !slices.Equal(got, want) {
		t.Fatalf("StalePathDevices = %v, want %v", got, want)
	}
}

func TestPathDeviceSpecs(t *testing.T) {
	main := wg.Spec{Name: "wg-a", ListenPort: 51820, MTU: 1420}
	specs, err := PathDeviceSpecs("a", main, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := []wg.Spec{{Name: "wg1-a", ListenPort: 51821, MTU: 1420}, {Name: "wg2-a", ListenPort: 51822, MTU: 1420}}
	if !slices.Equal(specs, want) {
		t.Fatalf("specs %+v, want %+v", specs, want)
	}
	if _, err := PathDeviceSpecs("a", wg.Spec{Name: "wg-a", ListenPort: 65535}, 1); err == nil {
		t.Fatal("a per-path port above 65535 must be an error")
	}
	if _, err := PathDeviceSpecs("a", main, MaxPathDevices+1); err == nil {
		t.Fatal("too many paths must be an error")
	}
}

func TestPathDeviceMap(t *testing.T) {
	refs := PathRefs([]config.RemoteCluster{
		{ID: "b", Endpoint: "192.0.2.2:51820", Paths: []string{"198.51.100.2:51820", "gw.example:51820"}},
		{ID: "c", Endpoint: "192.0.2.4:51820"},
	})
	devs := []PathDevice{{1, "wg1-a"}, {2, "wg2-a"}}
	got := PathDeviceMap(refs, "wg-a", devs)
	// gw.example has no IP endpoint: its path is not steered onto (no device can reach it).
	want := map[string]string{"b/192.0.2.2": "wg-a", "b/198.51.100.2": "wg1-a", "c/192.0.2.4": "wg-a"}
	if !maps.Equal(got, want) {
		t.Fatalf("PathDeviceMap = %v, want %v", got, want)
	}
	if m := PathDeviceMap(PathRefs([]config.RemoteCluster{{ID: "c", Endpoint: "192.0.2.4:51820"}}), "wg-a", devs); m != nil {
		t.Fatalf("single path: %v, want nil (the one tunnel)", m)
	}
}

func TestComputePathPeers(t *testing.T) {
	kb, kc := pub(t), pub(t)
	gwB := Gateway{Cluster: "b", Node: "b-gw", PublicKey: kb, Endpoints: ep("192.0.2.2:51820"), PodCIDRs: pfx("10.248.0.0/16")}
	gwC := Gateway{Cluster: "c", Node: "c-gw", PublicKey: kc, Endpoints: ep("192.0.2.4:51820"), PodCIDRs: pfx("10.252.0.0/16")}
	refs := PathRefs([]config.RemoteCluster{
		{ID: "b", Endpoint: "192.0.2.2:51820", Paths: []string{"198.51.100.2:51820", "203.0.113.2:51820"}},
		{ID: "c", Endpoint: "192.0.2.4:51820", Paths: []string{"198.51.100.4:51820"}},
	})
	peers := func(ps []wg.Peer) []string {
		var out []string
		for _, p := range ps {
			out = append(out, fmt.Sprintf("%s %s %s %s", map[string]string{kb.String(): "B", kc.String(): "C"}[p.PublicKey.String()], p.Endpoint, p.AllowedIPs, p.Keepalive))
		}
		return out
	}
	in := Input{LocalCluster: "a", Gateway: true, Device: "wg-a", Keepalive: 25 * time.Second, Gateways: []Gateway{gwB, gwC}, Paths: refs,
		PathDevices: []PathDevice{{1, "wg1-a"}, {2, "wg2-a"}, {3, "wg3-a"}}}
	p := Compute(in)
	if got, want := peers(p.Peers), []string{"B 192.0.2.2:51820 [10.248.0.0/16] 25s", "C 192.0.2.4:51820 [10.252.0.0/16] 25s"}; !slices.Equal(got, want) {
		t.Fatalf("main peers %v, want %v", got, want)
	}
	wantPath := map[string][]string{
		"wg1-a": {"B 198.51.100.2:51821 [10.248.0.0/16] 25s", "C 198.51.100.4:51821 [10.252.0.0/16] 25s"},
		"wg2-a": {"B 203.0.113.2:51822 [10.248.0.0/16] 25s"},
		"wg3-a": nil, // no cluster has a 4th path: the device is emptied
	}
	if len(p.PathPeers) != len(wantPath) {
		t.Fatalf("path peers for %v, want %v", slices.Sorted(maps.Keys(p.PathPeers)), slices.Sorted(maps.Keys(wantPath)))
	}
	for dev, want := range wantPath {
		if got := peers(p.PathPeers[dev]); !slices.Equal(got, want) {
			t.Errorf("%s peers %v, want %v", dev, got, want)
		}
	}
	// Routes only through the main device (per-path devices are reached by steering).
	for _, r := range p.Routes {
		if r.Dev != "wg-a" {
			t.Errorf("route %+v on a per-path device", r)
		}
	}
	var tp []string
	for _, tun := range p.Tunnels {
		for _, x := range tun.Paths {
			tp = append(tp, x.PathID+"="+x.Device+"@"+x.Endpoint.String())
		}
	}
	want := []string{"b/192.0.2.2=wg-a@192.0.2.2:51820", "b/198.51.100.2=wg1-a@198.51.100.2:51821", "b/203.0.113.2=wg2-a@203.0.113.2:51822",
		"c/192.0.2.4=wg-a@192.0.2.4:51820", "c/198.51.100.4=wg1-a@198.51.100.4:51821"}
	if !slices.Equal(tp, want) {
		t.Fatalf("tunnel paths %v, want %v", tp, want)
	}

	// A cluster that is not announced has no peer on any device; a node that is not a
	// gateway plans no path peers.
	in.Gateways = []Gateway{gwC}
	p = Compute(in)
	if got := strings.Join(peers(p.PathPeers["wg1-a"]), ";"); got != "C 198.51.100.4:51821 [10.252.0.0/16] 25s" {
		t.Fatalf("without B's announcement, wg1-a peers %q", got)
	}
	in.Gateway = false
	if p = Compute(in); p.PathPeers != nil {
		t.Fatalf("not a gateway: path peers %v", p.PathPeers)
	}
}

func TestReconcilePathDevices(t *testing.T) {
	kb := pub(t)
	gwB := Gateway{Cluster: "b", Node: "b-gw", PublicKey: kb, Endpoints: ep("192.0.2.2:51820"), PodCIDRs: pfx("10.248.0.0/16")}
	main, d1 := newFakeDev("wg-a"), newFakeDev("wg1-a")
	var mss []string
	r := NewReconciler(ReconcilerOptions{Device: main, PathDevices: map[int]wg.Device{1: d1},
		MSS: func(devs []string) error { mss = devs; return nil }})
	in := Input{LocalCluster: "a", Gateway: true, Gateways: []Gateway{gwB},
		Paths: PathRefs([]config.RemoteCluster{{ID: "b", Endpoint: "192.0.2.2:51820", Paths: []string{"198.51.100.2:51820"}}})}
	if _, err := r.Reconcile(in); err != nil {
		t.Fatal(err)
	}
	if len(d1.peers) != 1 || d1.peers[0].Endpoint.String() != "198.51.100.2:51821" || len(main.peers) != 1 {
		t.Fatalf("main %+v, wg1-a %+v", main.peers, d1.peers)
	}
	if !slices.Equal(mss, []string{"wg-a", "wg1-a"}) {
		t.Fatalf("MSS clamp on %v", mss)
	}
	st := r.Status()
	if len(st.Tunnels) != 1 || len(st.Tunnels[0].Paths) != 2 {
		t.Fatalf("status %+v", st)
	}
	// B withdrawn: both devices lose the peer.
	in.Gateways = nil
	if _, err := r.Reconcile(in); err != nil {
		t.Fatal(err)
	}
	if len(d1.peers) != 0 || len(main.peers) != 0 {
		t.Fatalf("after the withdrawal: main %+v, wg1-a %+v", main.peers, d1.peers)
	}
}

// namedDev records the peers it was configured with and the specs it was ensured with;
// State reports its peers with handshake (zero: none).
type namedDev struct {
	name      string
	peers     []wg.Peer
	specs     []wg.Spec
	handshake time.Time
}

func newFakeDev(name string) *namedDev { return &namedDev{name: name} }

func (d *namedDev) Ensure(s wg.Spec) error { d.specs = append(d.specs, s); return nil }
func (d *namedDev) Configure(peers []wg.Peer) (wg.Changes, error) {
	d.peers = slices.Clone(peers)
	return wg.Changes{}, nil
}
func (d *namedDev) State() (*wgtypes.Device, error) {
	st := &wgtypes.Device{Name: d.name}
	for _, p := range d.peers {
		st.Peers = append(st.Peers, wgtypes.Peer{PublicKey: p.PublicKey, LastHandshakeTime: d.handshake})
	}
	return st, nil
}
func (d *namedDev) Applies() uint64 { return 0 }
func (d *namedDev) Name() string    { return d.name }
func (d *namedDev) Close() error    { return nil }

func TestPathHandshakes(t *testing.T) {
	kb := pub(t)
	gwB := Gateway{Cluster: "b", Node: "b-gw", PublicKey: kb, Endpoints: ep("192.0.2.2:51820"), PodCIDRs: pfx("10.248.0.0/16")}
	main, d1, d2 := newFakeDev("wg-a"), newFakeDev("wg1-a"), newFakeDev("wg2-a")
	r := NewReconciler(ReconcilerOptions{Device: main, PathDevices: map[int]wg.Device{1: d1, 2: d2}})
	if got := r.PathHandshakes(); len(got) != 0 {
		t.Fatalf("before any reconcile: %v", got)
	}
	in := Input{LocalCluster: "a", Gateway: true, Gateways: []Gateway{gwB},
		Paths: PathRefs([]config.RemoteCluster{{ID: "b", Endpoint: "192.0.2.2:51820", Paths: []string{"198.51.100.2:51820", "203.0.113.2:51820"}}})}
	if _, err := r.Reconcile(in); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(5000, 0)
	d1.handshake = at
	got := r.PathHandshakes()
	want := map[string]time.Time{"b/198.51.100.2": at, "b/203.0.113.2": {}} // the main device's path is not listed
	if !maps.Equal(got, want) {
		t.Fatalf("PathHandshakes = %v, want %v", got, want)
	}
}

// A rotation applies the new key to the per-path devices too (they share the key the
// one announcement carries).
func TestRotateAppliesToPathDevices(t *testing.T) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	main, d1 := newFakeDev("wg-a"), newFakeDev("wg1-a")
	spec := wg.Spec{Name: "wg-a", ListenPort: 51820, PrivateKey: k}
	specs, err := PathDeviceSpecs("a", spec, 1)
	if err != nil {
		t.Fatal(err)
	}
	var announced []string
	r := NewRotator(RotatorOptions{Device: main, Spec: spec, PathDevices: []DeviceSpec{{Device: d1, Spec: specs[0]}},
		Announce: func(a announce.Announcement) error { announced = append(announced, a.Tunnel.PublicKey); return nil }})
	res, err := r.Rotate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(main.specs) != 1 || len(d1.specs) != 1 || main.specs[0].PrivateKey != d1.specs[0].PrivateKey || d1.specs[0].PrivateKey == k {
		t.Fatalf("main ensured with %+v, wg1-a with %+v: want the same new key", main.specs, d1.specs)
	}
	if d1.specs[0].Name != "wg1-a" || d1.specs[0].ListenPort != 51821 {
		t.Fatalf("wg1-a ensured as %+v", d1.specs[0])
	}
	if len(announced) != 1 || res.PublicKey != d1.specs[0].PrivateKey.PublicKey().String() {
		t.Fatalf("announced %v, result %+v", announced, res)
	}
}

package tunnel

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/dataplane/route"
	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/mesh/announce"
)

func pub(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func ep(s string) []netip.AddrPort { return []netip.AddrPort{netip.MustParseAddrPort(s)} }

func condTypes(cs []Condition) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Cluster+":"+c.Type)
	}
	return out
}

func TestCompute(t *testing.T) {
	kb, kb2, kc := pub(t), pub(t), pub(t)
	gwB := Gateway{Cluster: "b", Node: "b-gw1", PublicKey: kb, Endpoints: ep("192.0.2.2:51820"), PodCIDRs: pfx("10.248.0.0/16")}
	gwB2 := Gateway{Cluster: "b", Node: "b-gw0", PublicKey: kb2, Endpoints: ep("192.0.2.3:51820"), PodCIDRs: pfx("10.248.0.0/16")}
	gwC := Gateway{Cluster: "c", Node: "c-gw", PublicKey: kc, Endpoints: ep("192.0.2.4:51820"), PodCIDRs: pfx("10.252.0.0/16")}
	self := Gateway{Cluster: "a", Node: "a-gw", PublicKey: pub(t), Endpoints: ep("192.0.2.1:51820"), PodCIDRs: pfx("10.244.0.0/16")}
	gw := Input{LocalCluster: "a", Gateway: true, Device: "wg-a", Keepalive: 25 * time.Second}
	for _, tc := range []struct {
		name    string
		in      Input
		peers   []string // public key: allowed IPs
		routes  []string
		conds   []string
		tunnels int
	}{
		{name: "gateway: one remote, own announcement ignored",
			in:     with(gw, []Gateway{gwB, self}, nil),
			peers:  []string{kb.String() + ":10.248.0.0/16"},
			routes: []string{"10.248.0.0/16 dev wg-a table 254"}, tunnels: 1},
		{name: "two gateways of one cluster: one peer, smallest node name",
			in:     with(gw, []Gateway{gwB, gwB2}, nil),
			peers:  []string{kb2.String() + ":10.248.0.0/16"},
			routes: []string{"10.248.0.0/16 dev wg-a table 254"}, tunnels: 1},
		{name: "non-gateway node: via the local gateway, no peers",
			in:     Input{LocalCluster: "a", GatewayAddr: netip.MustParseAddr("172.18.0.2"), GatewayDev: "eth0", Gateways: []Gateway{gwB, gwC}},
			routes: []string{"10.248.0.0/16 via 172.18.0.2 dev eth0 table 254", "10.252.0.0/16 via 172.18.0.2 dev eth0 table 254"}, tunnels: 2},
		{name: "ConfigMap cidr disagrees: reported, announced prefix programmed",
			in:     with(gw, []Gateway{gwB}, []Hint{{Cluster: "b", CIDRs: pfx("10.249.0.0/16"), Endpoint: "192.0.2.2:51820"}}),
			peers:  []string{kb.String() + ":10.248.0.0/16"},
			routes: []string{"10.248.0.0/16 dev wg-a table 254"}, conds: []string{"b:" + CondCIDRMismatch}, tunnels: 1},
		{name: "ConfigMap endpoint disagrees",
			in:     with(gw, []Gateway{gwB}, []Hint{{Cluster: "b", CIDRs: pfx("10.248.0.0/16"), Endpoint: "198.51.100.1:51820"}}),
			peers:  []string{kb.String() + ":10.248.0.0/16"},
			routes: []string{"10.248.0.0/16 dev wg-a table 254"}, conds: []string{"b:" + CondEndpointMismatch}, tunnels: 1},
		{name: "configured but not announced: nothing programmed",
			in:    with(gw, nil, []Hint{{Cluster: "b", CIDRs: pfx("10.248.0.0/16")}}),
			conds: []string{"b:" + CondNotAnnounced}},
		{name: "overlapping prefixes: first cluster wins, second reported",
			in:     with(gw, []Gateway{gwB, {Cluster: "c", Node: "c-gw", PublicKey: kc, Endpoints: ep("192.0.2.4:51820"), PodCIDRs: pfx("10.248.128.0/17", "10.252.0.0/16")}}, nil),
			peers:  []string{kb.String() + ":10.248.0.0/16", kc.String() + ":10.252.0.0/16"},
			routes: []string{"10.248.0.0/16 dev wg-a table 254", "10.252.0.0/16 dev wg-a table 254"},
			conds:  []string{"c:" + CondPrefixConflict}, tunnels: 2},
		{name: "no endpoint",
			in:    with(gw, []Gateway{{Cluster: "b", Node: "b-gw", PublicKey: kb, PodCIDRs: pfx("10.248.0.0/16")}}, nil),
			conds: []string{"b:" + CondNoEndpoint}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Compute(tc.in)
			var peers, routes []string
			for _, pe := range p.Peers {
				var ips []string
				for _, a := range pe.AllowedIPs {
					ips = append(ips, a.String())
				}
				peers = append(peers, pe.PublicKey.String()+":"+strings.Join(ips, ","))
			}
			for _, r := range p.Routes {
				r.Table = max(r.Table, route.MainTable)
				routes = append(routes, r.String())
			}
			slices.Sort(peers)
			want := slices.Clone(tc.peers)
			slices.Sort(want)
			if !slices.Equal(peers, want) {
				t.Errorf("peers %v, want %v", peers, want)
			}
			if !slices.Equal(routes, tc.routes) {
				t.Errorf("routes %v, want %v", routes, tc.routes)
			}
			if got := condTypes(p.Conditions); !slices.Equal(got, tc.conds) {
				t.Errorf("conditions %v (%+v), want %v", got, p.Conditions, tc.conds)
			}
			if len(p.Tunnels) != tc.tunnels {
				t.Errorf("%d tunnels, want %d", len(p.Tunnels), tc.tunnels)
			}
			// Deterministic.
			if q := Compute(tc.in); !slices.EqualFunc(p.Routes, q.Routes, func(a, b route.Route) bool { return a == b }) {
				t.Error("Compute is not deterministic")
			}
		})
	}
}

func with(in Input, gws []Gateway, hints []Hint) Input {
	in.Gateways, in.Hints = gws, hints
	return in
}

// Only other clusters' tunnel announcements become gateways (expired ones have left the
// state by then: the integration test covers expiry end to end).
func TestGatewaysFromAnnouncements(t *testing.T) {
	k := pub(t)
	now := time.Unix(1_800_000_000, 0)
	a := Announcement(k, ep("192.0.2.2:51820"), pfx("10.248.0.0/16"))
	a.Cluster, a.Origin, a.Seq, a.Expires = "b", "b-gw", 1, now.Add(time.Minute).UnixMilli()
	prefix := announce.Announcement{Kind: announce.KindPrefix, Cluster: "b", Origin: "b-gw", Seq: 1, Expires: a.Expires, Prefixes: pfx("10.248.0.0/24")}
	own := a
	own.Cluster, own.Origin = "a", "a-gw"
	anns := []announce.Announcement{a, prefix, own}
	gws := GatewaysFromAnnouncements(anns, "a")
	if len(gws) != 1 || gws[0].PublicKey != k || gws[0].Cluster != "b" || gws[0].Endpoints[0].Port() != 51820 {
		t.Fatalf("gateways %+v", gws)
	}
	if gws := GatewaysFromAnnouncements(nil, "a"); len(gws) != 0 {
		t.Fatal("no announcements, no gateways")
	}
}

// fakeDevice applies wg.Diff to an in-memory device, counting applies.
type fakeDevice struct {
	mu      sync.Mutex
	dev     wgtypes.Device
	applies uint64
	log     *[]string
}

func (f *fakeDevice) Ensure(s wg.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dev.PrivateKey != s.PrivateKey {
		f.dev.PrivateKey, f.dev.PublicKey = s.PrivateKey, s.PrivateKey.PublicKey()
		f.applies++
		*f.log = append(*f.log, "ensure")
	}
	return nil
}

func (f *fakeDevice) Configure(peers []wg.Peer) (wg.Changes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ch, ok, err := wg.Diff(&f.dev, peers)
	if err != nil || !ok {
		return ch, err
	}
	f.applies++
	f.dev.Peers = nil
	for _, p := range peers {
		wp := wgtypes.Peer{PublicKey: p.PublicKey, PersistentKeepaliveInterval: p.Keepalive}
		if p.Endpoint.IsValid() {
			wp.Endpoint = netUDP(p.Endpoint)
		}
		for _, a := range p.AllowedIPs {
			wp.AllowedIPs = append(wp.AllowedIPs, ipNet(a))
		}
		f.dev.Peers = append(f.dev.Peers, wp)
	}
	return ch, nil
}
func (f *fakeDevice) State() (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.dev
	return &d, nil
}
func (f *fakeDevice) Applies() uint64 { f.mu.Lock(); defer f.mu.Unlock(); return f.applies }
func (f *fakeDevice) Name() string    { return "wg-a" }
func (f *fakeDevice) Close() error    { return nil }

type fakeRoutes struct{ sets []route.Desired }

func (f *fakeRoutes) Set(d route.Desired) (route.Result, error) {
	f.sets = append(f.sets, d)
	return route.Result{}, nil
}

func TestReconcilerIdempotentAndWithdraws(t *testing.T) {
	var log []string
	dev := &fakeDevice{log: &log}
	rts := &fakeRoutes{}
	var mss [][]string
	r := NewReconciler(ReconcilerOptions{Device: dev, Routes: rts, MSS: func(d []string) error { mss = append(mss, d); return nil }})
	kb := pub(t)
	in := Input{LocalCluster: "a", Gateway: true, Gateways: []Gateway{{Cluster: "b", Node: "b-gw", PublicKey: kb, Endpoints: ep("192.0.2.2:51820"), PodCIDRs: pfx("10.248.0.0/16")}}}
	if _, err := r.Reconcile(in); err != nil {
		t.Fatal(err)
	}
	if dev.Applies() != 1 || len(rts.sets[0].Routes) != 1 || rts.sets[0].Routes[0].Dev != "wg-a" || len(mss) != 1 || mss[0][0] != "wg-a" {
		t.Fatalf("first reconcile: applies %d, routes %+v, mss %v", dev.Applies(), rts.sets, mss)
	}
	if _, err := r.Reconcile(in); err != nil || dev.Applies() != 1 {
		t.Fatalf("second reconcile with the same input applied again (%d applies, %v)", dev.Applies(), err)
	}
	if st := r.Status(); len(st.Tunnels) != 1 || st.Tunnels[0].Cluster != "b" || st.Device != "wg-a" {
		t.Fatalf("status %+v", st)
	}
	// Cluster b's announcements expired: peer and routes withdrawn.
	in.Gateways = nil
	if _, err := r.Reconcile(in); err != nil {
		t.Fatal(err)
	}
	st, _ := dev.State()
	if len(st.Peers) != 0 || len(rts.sets[len(rts.sets)-1].Routes) != 0 || dev.Applies() != 2 {
		t.Fatalf("after withdrawal: peers %v, routes %+v", st.Peers, rts.sets[len(rts.sets)-1])
	}
}

type memKV map[string]string

func (m memKV) Get(_ context.Context, k string) (string, bool, error) {
	v, ok := m[k]
	return v, ok, nil
}
func (m memKV) Set(_ context.Context, k, v string) error { m[k] = v; return nil }

func TestRotateAppliesLocallyFirstThenAnnounces(t *testing.T) {
	var log []string
	dev := &fakeDevice{log: &log}
	kv := memKV{}
	ctx := context.Background()
	k, created, err := LoadOrCreateKey(ctx, kv, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if k2, c2, _ := LoadOrCreateKey(ctx, kv, time.Now().Add(time.Hour)); k2 != k || !c2.Equal(created.UTC()) {
		t.Fatal("a restart must keep the persisted key and its age")
	}
	_ = dev.Ensure(wg.Spec{PrivateKey: k})
	log = nil
	var announced []announce.Announcement
	rot := NewRotator(RotatorOptions{Device: dev, Spec: wg.Spec{Name: "wg-a", PrivateKey: k}, CreatedAt: created, Store: kv,
		Endpoints: ep("192.0.2.1:51820"), PodCIDRs: pfx("10.244.0.0/16"),
		Announce: func(a announce.Announcement) error {
			log = append(log, "announce")
			announced = append(announced, a)
			return nil
		}})
	res, err := rot.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(log, []string{"ensure", "announce"}) {
		t.Fatalf("order %v: the new key must be applied locally before it is announced", log)
	}
	st, _ := dev.State()
	if res.PublicKey == k.PublicKey().String() || res.PreviousPublicKey != k.PublicKey().String() || st.PublicKey.String() != res.PublicKey {
		t.Fatalf("result %+v, device key %s", res, st.PublicKey)
	}
	a := announced[0]
	if a.Kind != announce.KindTunnel || a.Tunnel.PublicKey != res.PublicKey || a.Prefixes[0] != netip.MustParsePrefix("10.244.0.0/16") {
		t.Fatalf("announcement %+v", a)
	}
	if k3, _, _ := LoadOrCreateKey(ctx, kv, time.Now()); k3.PublicKey().String() != res.PublicKey {
		t.Fatal("the rotated key is not persisted")
	}
}

func TestRoutesViaGateway(t *testing.T) {
	gw := netip.MustParseAddr("10.78.0.1")
	for _, tc := range []struct {
		name  string
		hints []Hint
		gw    netip.Addr
		dev   string
		want  []string
	}{
		{name: "one remote", hints: []Hint{{Cluster: "b", CIDRs: pfx("10.248.0.0/16")}}, gw: gw, dev: "eth0",
			want: []string{"10.248.0.0/16 via 10.78.0.1 dev eth0 table 254"}},
		{name: "sorted, deduplicated, masked, local dropped", hints: []Hint{
			{Cluster: "c", CIDRs: pfx("10.252.1.0/16")}, {Cluster: "b", CIDRs: pfx("10.248.0.0/16")},
			{Cluster: "b2", CIDRs: pfx("10.248.0.0/16")}, {Cluster: "a", CIDRs: pfx("10.244.0.0/16")}}, gw: gw, dev: "eth0",
			want: []string{"10.248.0.0/16 via 10.78.0.1 dev eth0 table 254", "10.252.0.0/16 via 10.78.0.1 dev eth0 table 254"}},
		{name: "no cidr configured", hints: []Hint{{Cluster: "b", Endpoint: "192.0.2.2:51820"}}, gw: gw, dev: "eth0"},
		{name: "prefix holding the gateway skipped", hints: []Hint{{Cluster: "b", CIDRs: pfx("10.78.0.0/16", "10.248.0.0/16")}}, gw: gw, dev: "eth0",
			want: []string{"10.248.0.0/16 via 10.78.0.1 dev eth0 table 254"}},
		{name: "no gateway known", hints: []Hint{{Cluster: "b", CIDRs: pfx("10.248.0.0/16")}}, dev: "eth0"},
		{name: "no device", hints: []Hint{{Cluster: "b", CIDRs: pfx("10.248.0.0/16")}}, gw: gw},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, r := range RoutesViaGateway("a", tc.hints, tc.gw, tc.dev, 0) {
				got = append(got, r.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("routes %q, want %q", got, tc.want)
			}
		})
	}
}

// A key stored by the tunnel's own LoadOrCreateKey before it moved to dataplane/wg
// (same kv key, same JSON) is read back unchanged: existing gateways keep their key.
func TestLoadOrCreateKeyReadsStoredFormat(t *testing.T) {
	const old = `{"privateKey":"2s3f5yK92p/b8hi9llTKUbak+P9WYR3JJgcAfZNzH5I=","createdAt":"2026-11-20T08:15:00.5Z"}`
	kv := memKV{"wireguard/key": old}
	k, created, err := LoadOrCreateKey(context.Background(), kv, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if k.String() != "2s3f5yK92p/b8hi9llTKUbak+P9WYR3JJgcAfZNzH5I=" || !created.Equal(time.Date(2026, 11, 20, 8, 15, 0, 5e8, time.UTC)) {
		t.Fatalf("key %s created %v, want the stored ones", k, created)
	}
	if kv["wireguard/key"] != old || len(kv) != 1 {
		t.Fatalf("kv rewritten: %q", kv)
	}
}

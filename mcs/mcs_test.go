package mcs

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/patronus/patronus/mcs/resolve"
	"github.com/patronus/patronus/mesh/announce"
)

func TestAnnouncementRoundTrip(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	tests := []struct {
		name string
		e    resolve.Export
		typ  string // expected wire Type
	}{
		{name: "plain", e: resolve.Export{Cluster: "c1", Namespace: "ns", Name: "web", Type: resolve.TypeClusterSetIP,
			SessionAffinity: resolve.AffinityNone, Ports: []resolve.Port{{Name: "http", Port: 80, Protocol: "TCP"}},
			Endpoints: []resolve.Endpoint{{Addr: netip.MustParseAddr("10.0.0.1"), Ready: true}}},
			typ: "ClusterSetIP"},
		{name: "affinity, time, not-ready endpoints", e: resolve.Export{Cluster: "c1", Namespace: "ns", Name: "web", Type: resolve.TypeHeadless,
			SessionAffinity: resolve.AffinityClientIP, AffinityTimeout: 600, ExportedAt: at,
			Ports: []resolve.Port{{Name: "a", Port: 1, Protocol: "UDP"}, {Name: "b", Port: 2, Protocol: "TCP", TargetPort: 8443}, {Name: "c", Port: 3}},
			Endpoints: []resolve.Endpoint{{Addr: netip.MustParseAddr("10.0.0.1"), Ready: false}, {Addr: netip.MustParseAddr("10.0.0.2"), Ready: true},
				{Addr: netip.MustParseAddr("fd00::3"), Ready: false}}},
			typ: "Headless;sa=ClientIP;sat=600;at=1772600767000;nr=0,2;tp=1:8443"},
		{name: "QoS class of the Service labels", e: resolve.Export{Cluster: "c1", Namespace: "ns", Name: "web", Type: resolve.TypeClusterSetIP,
			SessionAffinity: resolve.AffinityNone, Ports: []resolve.Port{{Name: "http", Port: 80, Protocol: "TCP"}}, QoSClass: "bulk"},
			typ: "ClusterSetIP;qc=bulk"},
		{name: "internal traffic policy and traffic distribution", e: resolve.Export{Cluster: "c1", Namespace: "ns", Name: "web", Type: resolve.TypeClusterSetIP,
			SessionAffinity: resolve.AffinityNone, Ports: []resolve.Port{{Name: "http", Port: 80, Protocol: "TCP"}},
			InternalTrafficPolicy: "Cluster", TrafficDistribution: "PreferClose"},
			typ: "ClusterSetIP;itp=Cluster;td=PreferClose"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := ToAnnouncement(tc.e)
			if s.Type != tc.typ {
				t.Errorf("wire type %q, want %q", s.Type, tc.typ)
			}
			if got := FromAnnouncement("c1", s); !got.Equal(tc.e) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, tc.e)
			}
		})
	}
	// A reader tolerates garbage and unknown fields in the suffix.
	got := FromAnnouncement("c2", &announce.Service{Namespace: "ns", Name: "x", Type: "ClusterSetIP;future=1;sat=abc;nr=zz",
		Endpoints: []netip.Addr{netip.MustParseAddr("10.0.0.9")}})
	if got.Type != resolve.TypeClusterSetIP || got.SessionAffinity != resolve.AffinityNone || !got.Endpoints[0].Ready {
		t.Errorf("lenient decode: %+v", got)
	}
	if got := FromAnnouncement("c2", &announce.Service{Namespace: "ns", Name: "x"}); got.Type != resolve.TypeClusterSetIP {
		t.Errorf("empty type decodes as %q", got.Type)
	}
}

// fakeNode is a MeshNode whose announcements land in a State as a receiver would put them.
type fakeNode struct{ sent []announce.Announcement }

func (f *fakeNode) Announce(a announce.Announcement) error { f.sent = append(f.sent, a); return nil }
func (f *fakeNode) State() *announce.State                 { return announce.NewState() }

func TestMeshAnnouncerPublishWithdraw(t *testing.T) {
	n := &fakeNode{}
	m := NewMeshAnnouncer(n)
	if err := m.Publish(resolve.Export{Namespace: "ns", Name: "web"}); err != nil {
		t.Fatal(err)
	}
	if err := m.Withdraw("ns", "web"); err != nil {
		t.Fatal(err)
	}
	if len(n.sent) != 2 || n.sent[0].Kind != announce.KindService || n.sent[0].Withdraw || !n.sent[1].Withdraw ||
		n.sent[1].Service.Namespace != "ns" || n.sent[1].Service.Name != "web" {
		t.Errorf("sent %+v", n.sent)
	}
}

func TestSliceName(t *testing.T) {
	tests := []struct{ svc, cluster string }{
		{"web", "east"},
		{"a-b", "c"},
		{"a", "b-c"},
		{strings.Repeat("s", 63), strings.Repeat("c", 63)},
		{"Web", "EAST_1"},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		for _, fam := range []discovery.AddressType{discovery.AddressTypeIPv4, discovery.AddressTypeIPv6} {
			n := SliceName(tc.svc, tc.cluster, fam)
			if len(n) > 63 || seen[n] || strings.ToLower(n) != n || strings.ContainsAny(n, "_") {
				t.Errorf("SliceName(%q, %q, %s) = %q (len %d, duplicate %v)", tc.svc, tc.cluster, fam, n, len(n), seen[n])
			}
			seen[n] = true
			if again := SliceName(tc.svc, tc.cluster, fam); again != n {
				t.Errorf("not stable: %q vs %q", n, again)
			}
		}
	}
}

func TestDesiredSlices(t *testing.T) {
	si := &mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: types.UID("u1")}}
	e := resolve.Export{Cluster: "west", Namespace: "ns", Name: "web",
		Ports: []resolve.Port{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "dns", Port: 53, Protocol: "UDP"}},
		Endpoints: []resolve.Endpoint{{Addr: netip.MustParseAddr("10.1.0.1"), Ready: true}, {Addr: netip.MustParseAddr("fd00::1"), Ready: false},
			{Addr: netip.MustParseAddr("::ffff:10.1.0.2"), Ready: true}}}
	merged := []resolve.Port{{Name: "http", Port: 80, Protocol: "TCP"}} // dns lost a conflict
	got := desiredSlices(si, e, merged)
	if len(got) != 2 || got[0].AddressType != discovery.AddressTypeIPv4 || got[1].AddressType != discovery.AddressTypeIPv6 {
		t.Fatalf("slices %+v", got)
	}
	v4 := got[0]
	var addrs []string
	for _, ep := range v4.Endpoints {
		addrs = append(addrs, ep.Addresses...)
	}
	if !reflect.DeepEqual(addrs, []string{"10.1.0.1", "10.1.0.2"}) {
		t.Errorf("v4 addresses %v", addrs)
	}
	if len(v4.Ports) != 1 || *v4.Ports[0].Name != "http" || *v4.Ports[0].Protocol != corev1.ProtocolTCP || *v4.Ports[0].Port != 8080 {
		t.Errorf("ports %+v", v4.Ports)
	}
	if *got[1].Endpoints[0].Conditions.Ready {
		t.Errorf("not-ready endpoint imported as ready")
	}
	wantLabels := map[string]string{mcsv1beta1.LabelServiceName: "web", mcsv1beta1.LabelSourceCluster: "west",
		discovery.LabelManagedBy: EndpointSliceManagedBy, LabelManagedBy: ManagedByValue}
	if !reflect.DeepEqual(v4.Labels, wantLabels) {
		t.Errorf("labels %v", v4.Labels)
	}
	if o := v4.OwnerReferences; len(o) != 1 || o[0].UID != "u1" || o[0].Kind != "ServiceImport" || o[0].APIVersion != "multicluster.x-k8s.io/v1beta1" {
		t.Errorf("owner %+v", o)
	}
	// No endpoints: still one (empty) slice, so the import shows the cluster exports.
	e.Endpoints = nil
	if got := desiredSlices(si, e, merged); len(got) != 1 || len(got[0].Endpoints) != 0 {
		t.Errorf("empty export: %+v", got)
	}
}

func TestNewValidates(t *testing.T) {
	base := func() Options {
		return Options{Kube: fakeKube(), MCS: fakeMCS(), ClusterID: "east", Identity: "n1", Announcer: NewBus().For("east")}
	}
	tests := []struct {
		name   string
		mod    func(*Options)
		errSub string
	}{
		{name: "ok", mod: func(*Options) {}},
		{name: "no cluster", mod: func(o *Options) { o.ClusterID = "" }, errSub: "cluster id"},
		{name: "cluster id not a label value", mod: func(o *Options) { o.ClusterID = "east/1" }, errSub: "cannot be a label value"},
		{name: "range overlaps service CIDR", mod: func(o *Options) {
			o.ClusterSetIPRange = netip.MustParsePrefix("10.100.0.0/16")
			o.Reserved = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}
		}, errSub: "overlaps 10.96.0.0/12"},
		{name: "default range clear of defaults", mod: func(o *Options) {
			o.Reserved = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("10.244.0.0/16")}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := base()
			tc.mod(&o)
			_, err := New(o)
			if tc.errSub == "" && err != nil || tc.errSub != "" && (err == nil || !strings.Contains(err.Error(), tc.errSub)) {
				t.Errorf("err = %v, want %q", err, tc.errSub)
			}
		})
	}
}

package mcs

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/patronus/patronus/mcs/datapath"
	"github.com/patronus/patronus/mcs/resolve"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/qos"
)

func TestServiceClass(t *testing.T) {
	tests := []struct {
		name    string
		labels  map[string]string
		want    qos.Class
		wantErr bool
	}{
		{"no label", map[string]string{"app": "web"}, "", false},
		{"latency-sensitive", map[string]string{qos.AnnotationClass: "latency-sensitive"}, qos.LatencySensitive, false},
		{"bulk", map[string]string{qos.AnnotationClass: "bulk"}, qos.Bulk, false},
		{"invalid", map[string]string{qos.AnnotationClass: "gold"}, "", true},
		{"other QoS keys are not classes", map[string]string{qos.AnnotationMaxLatency: "50"}, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ServiceClass(tc.labels)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Errorf("ServiceClass = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestVIPClass(t *testing.T) {
	own := func(c string) map[string]string { return map[string]string{qos.AnnotationClass: c} }
	tests := []struct {
		name      string
		pod       map[string]string
		service   qos.Class
		def, want qos.Class
	}{
		{"pod without class takes the service's", nil, qos.LatencySensitive, qos.BestEffort, qos.LatencySensitive},
		{"pod's own class wins", own("bulk"), qos.LatencySensitive, qos.BestEffort, qos.Bulk},
		{"pod's explicit best-effort wins too", own("best-effort"), qos.LatencySensitive, qos.BestEffort, qos.BestEffort},
		{"pod's invalid class: the service's", own("gold"), qos.Bulk, qos.BestEffort, qos.Bulk},
		{"neither: the node default", nil, "", qos.Bulk, qos.Bulk},
		{"invalid default: best-effort", nil, "", "x", qos.BestEffort},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := VIPClass(tc.pod, tc.service, tc.def); got != tc.want {
				t.Errorf("VIPClass = %q, want %q", got, tc.want)
			}
		})
	}
}

// The import's class is the oldest export's that names one; it travels in the
// announcement and an old reader's unknown value is dropped.
func TestImportQoSClass(t *testing.T) {
	ex := func(cluster string, at int64, class string) resolve.Export {
		return resolve.Export{Cluster: cluster, Namespace: "ns", Name: "web", QoSClass: class, ExportedAt: time.Unix(at, 0).UTC()}
	}
	for _, tc := range []struct {
		name string
		in   []resolve.Export
		want string
	}{
		{"none", []resolve.Export{ex("a", 1, ""), ex("b", 2, "")}, ""},
		{"oldest with a class", []resolve.Export{ex("b", 2, "bulk"), ex("a", 1, ""), ex("c", 3, "latency-sensitive")}, "bulk"},
		{"oldest wins", []resolve.Export{ex("b", 2, "bulk"), ex("a", 1, "latency-sensitive")}, "latency-sensitive"},
	} {
		if got := resolve.Merge(tc.in).QoSClass; got != tc.want {
			t.Errorf("%s: merged class %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := FromAnnouncement("c", &announce.Service{Namespace: "ns", Name: "x", Type: "ClusterSetIP;qc=gold"}); got.QoSClass != "" {
		t.Errorf("invalid class decoded as %q", got.QoSClass)
	}
}

func TestWithPriorities(t *testing.T) {
	vip := netip.MustParseAddr("10.112.0.10")
	withClass := func(name, class string) *mcsv1beta1.ServiceImport {
		si := imp(name, "10.112.0.10", mcsv1beta1.ClusterSetIP, "west")
		if class != "" {
			si.Annotations = map[string]string{AnnotationQoSClass: class}
		}
		return si
	}
	prio := func(c qos.Class) uint32 {
		return map[qos.Class]uint32{qos.LatencySensitive: 6, qos.Bulk: 2}[c]
	}
	imports := []*mcsv1beta1.ServiceImport{withClass("a", "latency-sensitive"), withClass("b", "bulk"), withClass("c", ""), withClass("d", "gold")}
	svcs := []datapath.Service{{Name: "ns/a", VIP: vip}, {Name: "ns/b", VIP: vip}, {Name: "ns/c", VIP: vip}, {Name: "ns/d", VIP: vip}}
	got := WithPriorities(svcs, imports, prio)
	want := []datapath.Service{{Name: "ns/a", VIP: vip, Priority: 6}, {Name: "ns/b", VIP: vip, Priority: 2}, {Name: "ns/c", VIP: vip}, {Name: "ns/d", VIP: vip}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if got := WithPriorities([]datapath.Service{{Name: "ns/a"}}, imports, nil); got[0].Priority != 0 {
		t.Errorf("nil prio set %d", got[0].Priority)
	}
}

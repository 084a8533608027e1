package mcs

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/patronus/patronus/mcs/datapath"
)

func imp(name, ip string, typ mcsv1beta1.ServiceImportType, clusters ...string) *mcsv1beta1.ServiceImport {
	si := &mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: mcsv1beta1.ServiceImportSpec{Type: typ, Ports: []mcsv1beta1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
	if ip != "" {
		si.Spec.IPs = []string{ip}
	}
	for _, c := range clusters {
		si.Status.Clusters = append(si.Status.Clusters, mcsv1beta1.ClusterStatus{Cluster: c})
	}
	return si
}

func slice(name string, lbl map[string]string, port int32, eps map[string]bool) *discoveryv1.EndpointSlice {
	pn, proto := "http", corev1.ProtocolTCP
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: lbl},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: &pn, Port: &port, Protocol: &proto}}}
	for a, r := range eps {
		r := r
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &r}})
	}
	return sl
}

func remoteSlice(svc, cluster string, port int32, eps map[string]bool) *discoveryv1.EndpointSlice {
	return slice(svc+"-"+cluster, map[string]string{discoveryv1.LabelManagedBy: EndpointSliceManagedBy,
		mcsv1beta1.LabelServiceName: svc, mcsv1beta1.LabelSourceCluster: cluster}, port, eps)
}

func localSlice(svc string, port int32, eps map[string]bool) *discoveryv1.EndpointSlice {
	return slice(svc+"-abcde", map[string]string{discoveryv1.LabelServiceName: svc}, port, eps)
}

func dep(a string, port uint16, ready, local bool) datapath.Endpoint {
	return datapath.Endpoint{Addr: netip.MustParseAddr(a), Port: port, Ready: ready, Local: local}
}

func TestBuildServices(t *testing.T) {
	vip := netip.MustParseAddr("10.112.0.10")
	affinity := imp("web", "10.112.0.10", mcsv1beta1.ClusterSetIP, "west")
	affinity.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	tests := []struct {
		name    string
		imports []*mcsv1beta1.ServiceImport
		slices  []*discoveryv1.EndpointSlice
		healthy func(string) bool
		want    []datapath.Service
	}{
		{name: "unreachable cluster's endpoints left out",
			imports: []*mcsv1beta1.ServiceImport{imp("web", "10.112.0.10", mcsv1beta1.ClusterSetIP, "west", "south")},
			slices: []*discoveryv1.EndpointSlice{remoteSlice("web", "west", 8080, map[string]bool{"10.245.0.1": true}),
				remoteSlice("web", "south", 8080, map[string]bool{"10.246.0.1": true})},
			healthy: func(c string) bool { return c != "west" },
			want: []datapath.Service{{Name: "ns/web", VIP: vip, Ports: []datapath.Port{{Protocol: "TCP", Port: 80,
				Endpoints: []datapath.Endpoint{dep("10.246.0.1", 8080, true, false)}}}}}},
		{name: "remote only; local Service slices ignored when this cluster does not export",
			imports: []*mcsv1beta1.ServiceImport{imp("web", "10.112.0.10", mcsv1beta1.ClusterSetIP, "west")},
			slices: []*discoveryv1.EndpointSlice{remoteSlice("web", "west", 8080, map[string]bool{"10.245.0.1": true, "10.245.0.2": false}),
				localSlice("web", 9090, map[string]bool{"10.244.0.1": true}), remoteSlice("other", "west", 1, map[string]bool{"10.245.9.9": true})},
			want: []datapath.Service{{Name: "ns/web", VIP: vip, Ports: []datapath.Port{{Protocol: "TCP", Port: 80,
				Endpoints: []datapath.Endpoint{dep("10.245.0.1", 8080, true, false), dep("10.245.0.2", 8080, false, false)}}}}}},
		{name: "local exporter: local slices marked local",
			imports: []*mcsv1beta1.ServiceImport{imp("web", "10.112.0.10", mcsv1beta1.ClusterSetIP, "east", "west")},
			slices:  []*discoveryv1.EndpointSlice{remoteSlice("web", "west", 8080, map[string]bool{"10.245.0.1": true}), localSlice("web", 9090, map[string]bool{"10.244.0.1": true})},
			want: []datapath.Service{{Name: "ns/web", VIP: vip, Ports: []datapath.Port{{Protocol: "TCP", Port: 80,
				Endpoints: []datapath.Endpoint{dep("10.244.0.1", 9090, true, true), dep("10.245.0.1", 8080, true, false)}}}}}},
		{name: "headless and VIP-less imports skipped",
			imports: []*mcsv1beta1.ServiceImport{imp("h", "", mcsv1beta1.Headless, "west"), imp("n", "", mcsv1beta1.ClusterSetIP, "west")}},
		{name: "ClientIP affinity gets the default timeout",
			imports: []*mcsv1beta1.ServiceImport{affinity},
			want: []datapath.Service{{Name: "ns/web", VIP: vip, AffinityTimeout: 10800 * time.Second,
				Ports: []datapath.Port{{Protocol: "TCP", Port: 80}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := BuildServices("east", tc.imports, tc.slices, tc.healthy)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

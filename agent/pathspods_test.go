package agent

import (
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/dataplane/steer"
	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/qos"
)

// A steering gateway steers the other nodes' pods by their status address and QoS
// annotations; its own pods (from the database) keep their entry; host-network, finished,
// terminating and address-less pods are left out.
func TestOtherPods(t *testing.T) {
	pod := func(name, ip string, ann map[string]string, mut ...func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: "u-" + types.UID(name), Annotations: ann},
			Status: corev1.PodStatus{Phase: corev1.PodRunning}}
		if ip != "" {
			p.Status.PodIP = ip
			p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		}
		for _, m := range mut {
			m(p)
		}
		return p
	}
	now := metav1.NewTime(time.Now())
	all := []*corev1.Pod{
		pod("local", "10.81.1.5", map[string]string{qos.AnnotationClass: "bulk"}), // the gateway's own: already listed
		pod("voice", "10.81.2.7", map[string]string{qos.AnnotationClass: "latency-sensitive", qos.AnnotationMaxLatency: "20"}),
		pod("backup", "10.81.3.9", map[string]string{qos.AnnotationClass: "bulk", qos.AnnotationMinBandwidth: "50"}),
		pod("plain", "10.81.3.10", nil),
		pod("dual", "", nil, func(p *corev1.Pod) { p.Status.PodIPs = []corev1.PodIP{{IP: "fd00::5"}, {IP: "10.81.2.8"}} }),
		pod("bad-class", "10.81.2.9", map[string]string{qos.AnnotationClass: "gold"}),
		pod("hostnet", "192.0.2.11", nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		pod("done", "10.81.3.11", nil, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		pod("going", "10.81.3.12", nil, func(p *corev1.Pod) { p.DeletionTimestamp = &now }),
		pod("pending", "", nil),
		pod("v6", "fd00::7", nil),
	}
	have := []podReq{{PodClass: steer.PodClass{Name: "ns/local", IP: netip.MustParseAddr("10.81.1.5"), Class: paths.Bulk}}}
	got := otherPods(all, have, qos.BestEffort)
	var s []string
	for _, r := range got {
		s = append(s, r.Name+" "+r.IP.String()+" "+string(r.Class))
		if r.Name == "ns/voice" && r.MaxLatencyMs != 20 {
			t.Errorf("voice max latency %v", r.MaxLatencyMs)
		}
		if r.Name == "ns/backup" && r.MinBandwidthMbps != 50 {
			t.Errorf("backup min bandwidth %v", r.MinBandwidthMbps)
		}
	}
	want := []string{"ns/voice 10.81.2.7 latency-sensitive", "ns/backup 10.81.3.9 bulk", "ns/plain 10.81.3.10 best-effort",
		"ns/dual 10.81.2.8 best-effort", "ns/bad-class 10.81.2.9 best-effort"}
	if !slices.Equal(s, want) {
		t.Fatalf("otherPods:\n got %q\nwant %q", s, want)
	}
}

// Per-path devices are opened only where the agent steers with them.
func TestPathDeviceCount(t *testing.T) {
	two := tunnel.PathRefs([]config.RemoteCluster{{ID: "c2", Endpoint: "192.0.2.2:51820", Paths: []string{"198.51.100.2:51820"}}})
	one := tunnel.PathRefs([]config.RemoteCluster{{ID: "c2", Endpoint: "192.0.2.2:51820"}})
	for _, tc := range []struct {
		name string
		o    Options
		refs []tunnel.PathRef
		want int
	}{
		{"default install, two paths", Options{Tunnel: &TunnelOptions{}, Paths: &PathsOptions{}}, two, 1},
		{"one path: today's single tunnel", Options{Tunnel: &TunnelOptions{}, Paths: &PathsOptions{}}, one, 0},
		{"--path-tunnels=false", Options{Tunnel: &TunnelOptions{NoPathTunnels: true}, Paths: &PathsOptions{}}, two, 0},
		{"--path-device given", Options{Tunnel: &TunnelOptions{}, Paths: &PathsOptions{Devices: map[string]string{"c2/192.0.2.2": "wg-x"}}}, two, 0},
		{"--paths=false: nothing would steer", Options{Tunnel: &TunnelOptions{}}, two, 0},
	} {
		if got := pathDeviceCount(&tc.o, tc.refs); got != tc.want {
			t.Errorf("%s: %d per-path devices, want %d", tc.name, got, tc.want)
		}
	}
}

// A per-path tunnel is steered onto only with a recent WireGuard session.
func TestUsableDevices(t *testing.T) {
	now := time.Unix(10000, 0)
	devs := map[string]string{"c2/a": "wg-x", "c2/b": "wg1-x", "c2/c": "wg2-x", "c2/d": "wg3-x"}
	hs := map[string]time.Time{
		"c2/b": now.Add(-time.Minute),      // live
		"c2/c": {},                         // never: the remote has no such device
		"c2/d": now.Add(-10 * time.Minute), // stale
	}
	got := usableDevices(devs, hs, now)
	if want := map[string]string{"c2/a": "wg-x", "c2/b": "wg1-x"}; !maps.Equal(got, want) {
		t.Fatalf("usableDevices = %v, want %v", got, want)
	}
	if got := usableDevices(devs, map[string]time.Time{}, now); !maps.Equal(got, devs) {
		t.Fatalf("no tunnel state yet: %v, want every device", got)
	}
}

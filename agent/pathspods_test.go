package agent

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/patronus/patronus/dataplane/steer"
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

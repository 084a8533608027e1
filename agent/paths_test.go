package agent

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/patronus/patronus/kube"
	"github.com/patronus/patronus/mesh/announce"
	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/qos"
	"github.com/patronus/patronus/store"
)

// A pod whose max-latency no path meets gets one Warning Event per onset, and its
// requirement is selected for (shown in patronus paths).
func TestPodPathsNoPathMeetsMaxLatency(t *testing.T) {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "voice", UID: "u1",
		Annotations: map[string]string{qos.AnnotationClass: "latency-sensitive", qos.AnnotationMaxLatency: "2"}}}
	if err := idx.Add(pod); err != nil {
		t.Fatal(err)
	}
	fake := record.NewFakeRecorder(10)
	a := &agent{podLister: corelisters.NewPodLister(idx), recorder: &kube.Recorder{EventRecorder: fake}}
	a.rows.replace([]store.Pod{{Namespace: "ns", Name: "voice", UID: "u1", IPs: []netip.Prefix{netip.MustParsePrefix("10.244.1.5/24")},
		Annotations: pod.Annotations}})
	m := paths.NewMonitor(paths.Config{Interval: 50 * time.Millisecond})
	t0 := time.Unix(1000, 0)
	if err := m.SetPaths([]paths.PathSpec{{ID: "c2/a", Dst: "c2"}, {ID: "c2/b", Dst: "c2"}}, t0); err != nil {
		t.Fatal(err)
	}
	pp := &podPaths{a: a, log: slog.New(slog.DiscardHandler), defClass: qos.BestEffort, dsts: []string{"c2"}}

	pp.tick(m, t0)
	if len(pp.pods) != 0 {
		t.Fatalf("pods read before the agent is ready: %+v", pp.pods)
	}
	a.ready.Store(true)
	now := t0.Add(time.Second)
	for i := range 5 { // c2/a answers in 10ms, c2/b in 30ms
		at := now.Add(time.Duration(i) * 50 * time.Millisecond)
		m.Sent("c2/a", uint64(i), at)
		m.Sent("c2/b", uint64(i), at)
		m.Reply("c2/a", uint64(i), at.Add(10*time.Millisecond))
		m.Reply("c2/b", uint64(i), at.Add(30*time.Millisecond))
	}
	now = now.Add(time.Second)
	pp.tick(m, now) // reads the pod, registers its requirement
	m.Tick(now)
	pp.tick(m, now.Add(time.Second)) // reports
	req := paths.Requirement{Dst: "c2", Class: paths.LatencySensitive, MaxLatency: 2 * time.Millisecond}
	if s, ok := m.Selection(req); !ok || s.PathID != "c2/a" || s.Condition != paths.CondNoPathMeetsMaxLatency {
		t.Fatalf("selection of the pod's requirement: %+v %v", s, ok)
	}
	select {
	case e := <-fake.Events:
		if !strings.HasPrefix(e, "Warning "+ReasonNoPathMeetsMaxLatency+" ") || !strings.Contains(e, "c2/a") || !strings.Contains(e, "2 ms") {
			t.Errorf("event %q", e)
		}
	default:
		t.Fatal("no Event on the pod")
	}
	pp.tick(m, now.Add(2*time.Second))
	select {
	case e := <-fake.Events:
		t.Errorf("second Event for the same onset: %q", e)
	default:
	}
}

// The gateway announces its measurements as a signed probe summary and shows the remote
// gateways' summaries about paths towards its own cluster.
func TestPodPathsExchangesProbeSummaries(t *testing.T) {
	m := paths.NewMonitor(paths.Config{})
	t0 := time.Unix(1000, 0)
	if err := m.SetPaths([]paths.PathSpec{{ID: "c2/a", Dst: "c2", BandwidthMbps: 100}}, t0); err != nil {
		t.Fatal(err)
	}
	m.Sent("c2/a", 1, t0)
	m.Reply("c2/a", 1, t0.Add(12*time.Millisecond))
	pp := &podPaths{log: slog.New(slog.DiscardHandler), cluster: "c1"}
	var sent []announce.Announcement
	remote := []announce.Announcement{
		{Kind: announce.KindProbe, Cluster: "c2", Origin: "gw2", Probe: &announce.Probe{Links: []announce.Link{
			{Peer: "c1", Path: "c1/x", RTTMicros: 12500, LossPPM: 20000}, {Peer: "c3", Path: "c3/y", RTTMicros: 1}}}},
		{Kind: announce.KindProbe, Cluster: "c1", Origin: "gw1", Probe: &announce.Probe{Links: []announce.Link{{Peer: "c1", Path: "own"}}}},
		{Kind: announce.KindTunnel, Cluster: "c2", Origin: "gw2"},
	}
	list := func() []announce.Announcement { return remote }
	collect := func(a announce.Announcement) error { sent = append(sent, a); return nil }
	pp.exchangeWith(collect, list, m, t0.Add(time.Second))
	pp.exchangeWith(collect, list, m, t0.Add(2*time.Second)) // within summaryEvery: not again
	if len(sent) != 1 || sent[0].Kind != announce.KindProbe || len(sent[0].Probe.Links) != 1 {
		t.Fatalf("announced %+v", sent)
	}
	if l := sent[0].Probe.Links[0]; l.Peer != "c2" || l.Path != "c2/a" || l.RTTMicros != 12000 || l.BandwidthKbps != 100000 {
		t.Errorf("link %+v", l)
	}
	got := m.Snapshot(t0).Remote
	if len(got) != 1 || got[0].Cluster != "c2" || got[0].PathID != "c1/x" || got[0].LatencyMs != 12.5 || got[0].Loss != 0.02 {
		t.Errorf("remote view %+v", got)
	}
	pp.exchangeWith(collect, list, m, t0.Add(7*time.Second))
	if len(sent) != 2 {
		t.Errorf("%d summaries after summaryEvery, want 2", len(sent))
	}
}

func TestAddSample(t *testing.T) {
	t0 := time.Unix(0, 0)
	var ss []bwSample
	var mbps float64
	var ok bool
	sec := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }
	if ss, _, ok = addSample(ss, bwSample{sec(0), 0}); ok {
		t.Fatal("rate from one sample")
	}
	for i := 1; i <= 10; i++ { // 1.25 MB/s = 10 Mbit/s
		ss, mbps, ok = addSample(ss, bwSample{sec(i), uint64(i) * 1_250_000})
		if !ok || mbps < 9.99 || mbps > 10.01 {
			t.Fatalf("second %d: %v %v", i, mbps, ok)
		}
	}
	if len(ss) > 7 {
		t.Errorf("window keeps %d samples", len(ss))
	}
	// Idle for 5 s: the rate falls to 0 once the window has no traffic in it.
	for i := 11; i <= 16; i++ {
		ss, mbps, _ = addSample(ss, bwSample{sec(i), 10 * 1_250_000})
	}
	if mbps != 0 {
		t.Errorf("idle rate %v", mbps)
	}
	// A reset counter restarts the window.
	if _, _, ok = addSample(ss, bwSample{sec(17), 5}); ok {
		t.Error("rate across a counter reset")
	}
}

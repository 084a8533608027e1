package policy_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/patronus/patronus/agent"
	"github.com/patronus/patronus/dataplane/enforce"
	"github.com/patronus/patronus/integration/k8senv"
)

// Scale of the policy update benchmark (issue 4: 1,000 pods, 500 policies).
const (
	benchPods       = 1000 // API objects, benchRealPods of them attached on the node
	benchRealPods   = 4
	benchPolicies   = 500
	benchNamespaces = 20
	benchIdle       = 10 * time.Second
)

// BenchmarkPolicyUpdateLatency measures NetworkPolicy created in the API server →
// enforced on the node (the enforcer's Set returned with it), with 1,000 pods and 500
// policies in the cluster, datapath "both" (eBPF and nftables). Each iteration creates a
// policy selecting a real pod and, untimed, deletes it again. Reported: p50/p99 of that
// latency, the API create call alone (baseline, same run), and the process's CPU and
// RSS idle and during the churn (the agent runs in-process: the numbers include the
// benchmark's own client calls; the API server and etcd are separate processes).
//
//	go test ./integration/policy -run '^$' -bench PolicyUpdateLatency -benchtime 200x
func BenchmarkPolicyUpdateLatency(b *testing.B) {
	c := k8senv.Start(b)
	k := c.Client()
	ctx := context.Background()

	var mu sync.Mutex
	var waiters []func([]enforce.Endpoint) bool
	onSync := func(eps []enforce.Endpoint, err error) {
		mu.Lock()
		defer mu.Unlock()
		waiters = slices.DeleteFunc(waiters, func(w func([]enforce.Endpoint) bool) bool { return w(eps) })
	}
	// waitFor registers before the change is made, so the Set that carries it is seen.
	waitFor := func(cond func([]enforce.Endpoint) bool) <-chan struct{} {
		ch := make(chan struct{})
		mu.Lock()
		waiters = append(waiters, func(eps []enforce.Endpoint) bool {
			if cond(eps) {
				close(ch)
				return true
			}
			return false
		})
		mu.Unlock()
		return ch
	}
	n := newNode(b, c, "both", func(o *agent.Options) {
		o.Policy.OnSync = onSync
	})

	// Namespaces, pods (API objects with an IP in status, on other nodes), policies.
	for i := range benchNamespaces {
		n.namespace("n" + strconv.Itoa(i))
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range benchPods - benchRealPods {
		g.Go(func() error {
			ns := fmt.Sprintf("%s-n%d", n.prefix, i%benchNamespaces)
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p%d", i),
				Labels: map[string]string{"app": fmt.Sprintf("app%d", i%50), "tier": fmt.Sprintf("t%d", i%5)}},
				Spec: corev1.PodSpec{NodeName: fmt.Sprintf("other-%d", i%10), Containers: []corev1.Container{{Name: "c", Image: "x",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}}
			created, err := k.CoreV1().Pods(ns).Create(gctx, p, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			ip := fmt.Sprintf("10.%d.%d.%d", 100+i/65536, (i/256)%256, i%256)
			created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
			_, err = k.CoreV1().Pods(ns).UpdateStatus(gctx, created, metav1.UpdateOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	var real []*pod
	for i := range benchRealPods {
		real = append(real, n.addPod("n"+strconv.Itoa(i%2), "real"+strconv.Itoa(i), false))
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range benchPolicies {
		g.Go(func() error {
			ns := fmt.Sprintf("%s-n%d", n.prefix, i%benchNamespaces)
			tcp := corev1.ProtocolTCP
			p80 := intstr.FromInt32(80)
			np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("np%d", i)},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: *sel("app", fmt.Sprintf("app%d", i%50)),
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From: []networkingv1.NetworkPolicyPeer{
							{PodSelector: sel("app", fmt.Sprintf("app%d", (i+1)%50))},
							{NamespaceSelector: sel("ns", fmt.Sprintf("n%d", (i+3)%benchNamespaces)), PodSelector: sel("tier", fmt.Sprintf("t%d", i%5))},
							{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("172.%d.0.0/16", 16+i%16)}},
						},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p80}}}},
				}}
			_, err := k.NetworkingV1().NetworkPolicies(ns).Create(gctx, np, metav1.CreateOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	// Settle: the agent has everything once a sync sees all real pods and no change
	// arrives for a second.
	time.Sleep(2 * time.Second)

	idleCPU := cpuOver(benchIdle)
	idleRSS := rssMB()

	target := real[0]
	ns := target.ns
	var lat, create, after []time.Duration
	sync0, syncN0 := syncSeconds(b, n)
	u0, t0 := cpuTime(), time.Now()
	i := 0
	for b.Loop() {
		name := "probe-" + strconv.Itoa(i)
		key := ns + "/" + name
		done := waitFor(func(eps []enforce.Endpoint) bool {
			for _, ep := range eps {
				if ep.Pod == target.name && ep.Namespace == ns && slices.Contains(ep.IngressPolicies, key) {
					return true
				}
			}
			return false
		})
		np := np(name, sel("pod", target.name), ingress, []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
			IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("192.168.%d.0/24", i%256)}}}}}, nil)
		np.Namespace = ns
		start := time.Now()
		if _, err := k.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		created := time.Now()
		create = append(create, created.Sub(start))
		select {
		case <-done:
			lat = append(lat, time.Since(start))
			after = append(after, time.Since(created))
		case <-time.After(10 * time.Second):
			b.Fatalf("policy %s not enforced within 10s", key)
		}
		b.StopTimer()
		gone := waitFor(func(eps []enforce.Endpoint) bool {
			for _, ep := range eps {
				if ep.Pod == target.name && ep.Namespace == ns {
					return !slices.Contains(ep.IngressPolicies, key)
				}
			}
			return false
		})
		if err := k.NetworkingV1().NetworkPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			b.Fatal(err)
		}
		<-gone
		b.StartTimer()
		i++
	}
	churnCPU := float64(cpuTime()-u0) / float64(time.Since(t0)) * 100
	churnRSS := rssMB()
	sync1, syncN1 := syncSeconds(b, n)
	slices.Sort(lat)
	slices.Sort(create)
	slices.Sort(after)
	// Every recompile in the loop (creations and deletions): kick → Set returned.
	syncMean := (sync1 - sync0) / float64(max(1, syncN1-syncN0)) * 1000
	pct := func(d []time.Duration, p float64) float64 {
		return float64(d[min(len(d)-1, int(float64(len(d))*p))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(lat, 0.50), "p50-ms")
	b.ReportMetric(pct(lat, 0.99), "p99-ms")
	b.ReportMetric(pct(create, 0.50), "api-create-p50-ms")
	b.ReportMetric(pct(create, 0.99), "api-create-p99-ms")
	b.ReportMetric(pct(after, 0.50), "after-create-p50-ms")
	b.ReportMetric(pct(after, 0.99), "after-create-p99-ms")
	b.ReportMetric(syncMean, "agent-sync-mean-ms")
	b.ReportMetric(idleCPU, "idle-cpu-%")
	b.ReportMetric(churnCPU, "churn-cpu-%")
	b.ReportMetric(idleRSS, "idle-rss-MB")
	b.ReportMetric(churnRSS, "churn-rss-MB")
	b.Logf("%d samples: enforce p50 %.1f ms p99 %.1f ms max %.1f ms; after the create call returned p50 %.1f p99 %.1f; API create p50 %.1f ms p99 %.1f; agent recompile+Set mean %.1f ms over %d syncs; CPU idle %.1f%% churn %.1f%%; RSS idle %.0f MB churn %.0f MB",
		len(lat), pct(lat, .5), pct(lat, .99), pct(lat, 1), pct(after, .5), pct(after, .99), pct(create, .5), pct(create, .99),
		syncMean, syncN1-syncN0, idleCPU, churnCPU, idleRSS, churnRSS)
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuOver returns the process's CPU use over d, in percent of one core.
func cpuOver(d time.Duration) float64 {
	u0, t0 := cpuTime(), time.Now()
	time.Sleep(d)
	return float64(cpuTime()-u0) / float64(time.Since(t0)) * 100
}

// rssMB is the process's resident set size.
func rssMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// syncSeconds reads patronus_policy_sync_seconds' sum and count from the agent's registry.
func syncSeconds(b *testing.B, n *node) (float64, uint64) {
	mfs, err := n.opts.Registry.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range mfs {
		if f.GetName() == "patronus_policy_sync_seconds" && len(f.GetMetric()) == 1 {
			h := f.GetMetric()[0].GetHistogram()
			return h.GetSampleSum(), h.GetSampleCount()
		}
	}
	return 0, 0
}

package agent

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/kube"
	"github.com/patronus/patronus/qos"
	"github.com/patronus/patronus/store"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// benchAgent is an agent with n pods registered in a real database and present in a
// lister, without an API server.
func benchAgent(b *testing.B, n int) *agent {
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(b.TempDir(), "db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for i := range n {
		name := fmt.Sprintf("pod-%d", i)
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name),
			Labels: map[string]string{"app": "web", "i": fmt.Sprint(i)}, Annotations: map[string]string{qos.AnnotationClass: "bulk"}}}
		idx.Add(p)
		if err := db.PutPod(ctx, store.Pod{ContainerID: "ctr-" + name, IfName: "eth0", Namespace: "default", Name: name,
			IPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), 16)}}); err != nil {
			b.Fatal(err)
		}
	}
	rows, err := db.ListPods(ctx)
	if err != nil {
		b.Fatal(err)
	}
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	a := &agent{opts: Options{NodeName: "n"}.withDefaults(), db: db, metrics: m, seen: newSeenSets(),
		podLister: corelisters.NewPodLister(idx), cfg: &config.Config{DefaultQoSClass: qos.BestEffort}}
	a.log = a.opts.Logger
	a.rows.replace(rows)
	return a
}

// BenchmarkReconcilePodUpToDate is the periodic resync of one pod whose rows are already
// in sync (the common case): no database access at all.
func BenchmarkReconcilePodUpToDate(b *testing.B) {
	for _, n := range []int{10, 110, 500} {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			a := benchAgent(b, n)
			ctx := context.Background()
			for i := range n { // first sync writes every row
				if err := a.reconcilePod(ctx, fmt.Sprintf("default/pod-%d", i)); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if err := a.reconcilePod(ctx, fmt.Sprintf("default/pod-%d", i%n)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReconcilePodFirstSync is matching a newly registered pod: one database write.
func BenchmarkReconcilePodFirstSync(b *testing.B) {
	a := benchAgent(b, 110)
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		// Alternate the label so every reconcile has something to write.
		p, _ := a.podLister.Pods("default").Get(fmt.Sprintf("pod-%d", i%110))
		p.Labels["gen"] = fmt.Sprint(time.Now().UnixNano())
		if err := a.reconcilePod(ctx, fmt.Sprintf("default/pod-%d", i%110)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreScan is one poll of the database (every StorePollInterval, 1s default).
func BenchmarkStoreScan(b *testing.B) {
	for _, n := range []int{10, 110, 500} {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			a := benchAgent(b, n)
			a.pods = &kube.Controller{Name: "pods", Reconcile: func(context.Context, string) error { return nil }}
			sc := newStoreScanner(a)
			defer sc.close()
			ctx := context.Background()
			for b.Loop() {
				sc.lastVersion = -1 // as if a plugin had written
				sc.scan(ctx)
			}
		})
	}
}

// BenchmarkStoreScanIdle is one poll of a database nobody wrote to since the last one.
func BenchmarkStoreScanIdle(b *testing.B) {
	a := benchAgent(b, 500)
	a.pods = &kube.Controller{Name: "pods", Reconcile: func(context.Context, string) error { return nil }}
	sc := newStoreScanner(a)
	defer sc.close()
	ctx := context.Background()
	sc.scan(ctx)
	for b.Loop() {
		sc.scan(ctx)
	}
	if len(sc.known) != 500 {
		b.Fatalf("scanner saw %d rows", len(sc.known))
	}
}

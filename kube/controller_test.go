package kube

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

func pod(ns, name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

func TestHandlerKeys(t *testing.T) {
	var got []string
	h := HandlerFunc(nil, "test", func(k string) { got = append(got, k) })
	h.OnAdd(pod("default", "a"), false)
	h.OnUpdate(pod("default", "a"), pod("default", "b"))
	h.OnDelete(pod("kube-system", "c"))
	// A deletion the watch missed arrives as a tombstone: the key must still be queued.
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/gone", Obj: pod("ns", "gone")})
	h.OnAdd(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cluster-scoped"}}, true)
	want := []string{"default/a", "default/b", "kube-system/c", "ns/gone", "cluster-scoped"}
	if len(got) != len(want) {
		t.Fatalf("keys %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("keys %v, want %v", got, want)
		}
	}
}

func TestControllerRetriesUntilSuccess(t *testing.T) {
	var mu sync.Mutex
	attempts := map[string]int{}
	results := map[bool]int{}
	done := make(chan struct{})
	c := &Controller{
		Name: "test",
		Reconcile: func(_ context.Context, key string) error {
			mu.Lock()
			defer mu.Unlock()
			attempts[key]++
			if key == "flaky" && attempts[key] < 3 {
				return errors.New("transient")
			}
			if key == "panics" && attempts[key] == 1 {
				panic("boom")
			}
			if attempts["flaky"] >= 3 && attempts["panics"] >= 2 && attempts["ok"] >= 1 {
				select {
				case <-done:
				default:
					close(done)
				}
			}
			return nil
		},
		OnResult: func(_ string, err error) {
			mu.Lock()
			results[err == nil]++
			mu.Unlock()
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { c.Run(ctx); close(stopped) }()
	c.Enqueue("ok")
	c.Enqueue("flaky")
	c.Enqueue("panics")
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("not converged: attempts %v", attempts)
	}
	cancel()
	<-stopped
	mu.Lock()
	defer mu.Unlock()
	if attempts["ok"] != 1 || attempts["flaky"] != 3 || attempts["panics"] != 2 {
		t.Errorf("attempts %v", attempts)
	}
	if results[false] != 3 {
		t.Errorf("want 3 failed reconciles reported (2 flaky, 1 panic), got %v", results)
	}
}

func TestControllerDedupsQueuedKeys(t *testing.T) {
	var mu sync.Mutex
	n := 0
	c := &Controller{Name: "dedup", Reconcile: func(context.Context, string) error { mu.Lock(); n++; mu.Unlock(); return nil }}
	for range 100 {
		c.Enqueue("same")
	}
	if c.Len() != 1 {
		t.Fatalf("queue length %d, want 1", c.Len())
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { c.Run(ctx); close(stopped) }()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		got := n
		mu.Unlock()
		if got == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-stopped
	if n != 1 {
		t.Fatalf("reconciled %d times, want 1", n)
	}
}

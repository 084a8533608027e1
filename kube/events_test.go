package kube

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"

	kfake "github.com/patronus/patronus/kube/kclient/fake"
)

func newTestPoster(t *testing.T) (*eventPoster, *kubefake.Clientset, *time.Time) {
	cs := kubefake.NewClientset()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	p := &eventPoster{k: kfake.Kube(cs), source: corev1.EventSource{Component: "patronus-agent", Host: "n1"},
		log: slog.New(slog.DiscardHandler), queue: make(chan *corev1.Event, eventQueue), now: func() time.Time { return now },
		retryPeriod: time.Millisecond, seen: map[string]*seenEvent{}, buckets: map[string]*bucket{}}
	return p, cs, &now
}

// drain posts what Event queued, synchronously.
func drain(p *eventPoster) {
	for {
		select {
		case e := <-p.queue:
			p.post(context.Background(), e)
		default:
			return
		}
	}
}

func events(t *testing.T, cs *kubefake.Clientset, ns string) []corev1.Event {
	t.Helper()
	l, err := cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func TestEventPosterWritesCountsAndLimits(t *testing.T) {
	p, cs, now := newTestPoster(t)
	// As the informer delivers it: no type meta.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "voip", UID: "u1", ResourceVersion: "7"}}

	p.Event(pod, corev1.EventTypeWarning, "InvalidQoSAnnotation", "bad class")
	drain(p)
	evs := events(t, cs, "apps")
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1", len(evs))
	}
	e := evs[0]
	want := corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: "apps", Name: "voip", UID: "u1", ResourceVersion: "7"}
	if e.InvolvedObject != want || e.Type != corev1.EventTypeWarning || e.Reason != "InvalidQoSAnnotation" || e.Message != "bad class" ||
		e.Count != 1 || e.Source.Host != "n1" || e.Source.Component != "patronus-agent" || !strings.HasPrefix(e.Name, "voip.") ||
		!e.FirstTimestamp.Equal(&metav1.Time{Time: *now}) {
		t.Fatalf("event %+v", e)
	}

	// The same event again: one object, counted, last timestamp moved.
	*now = now.Add(time.Minute)
	p.Event(pod, corev1.EventTypeWarning, "InvalidQoSAnnotation", "bad class")
	drain(p)
	evs = events(t, cs, "apps")
	if len(evs) != 1 || evs[0].Count != 2 || evs[0].Name != e.Name || !evs[0].LastTimestamp.Time.Equal(*now) {
		t.Fatalf("repeat: %d events, %+v", len(evs), evs)
	}

	// A repeat of an event someone deleted is created again.
	if err := cs.CoreV1().Events("apps").Delete(context.Background(), e.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p.Event(pod, corev1.EventTypeWarning, "InvalidQoSAnnotation", "bad class")
	drain(p)
	if evs = events(t, cs, "apps"); len(evs) != 1 {
		t.Fatalf("after delete: %d events", len(evs))
	}

	// Per object: a burst of 25, then one per 5 minutes. Three were spent above, and one
	// event object exists.
	for i := range 40 {
		*now = now.Add(time.Millisecond) // names are the object's and the time's
		p.Event(pod, corev1.EventTypeWarning, "R", fmt.Sprint("message ", i))
	}
	drain(p)
	if n := len(events(t, cs, "apps")); n != 1+eventBurst-3 {
		t.Fatalf("%d events after a burst of 40, want %d (the limit)", n, 1+eventBurst-3)
	}
	*now = now.Add(eventRefill)
	p.Event(pod, corev1.EventTypeWarning, "R", "after refill")
	*now = now.Add(time.Millisecond)
	p.Event(pod, corev1.EventTypeWarning, "R", "after refill 2")
	drain(p)
	if n := len(events(t, cs, "apps")); n != 1+eventBurst-3+1 {
		t.Fatalf("%d events after 5 minutes, want one more", n)
	}
	// Another object has its own bucket; a cluster-scoped one's events go to default.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "nu"}}
	p.Event(node, corev1.EventTypeNormal, "R", "m")
	drain(p)
	if evs := events(t, cs, metav1.NamespaceDefault); len(evs) != 1 || evs[0].InvolvedObject.Kind != "Node" {
		t.Fatalf("node event: %+v", evs)
	}
}

func TestEventPosterNeverBlocks(t *testing.T) {
	p, _, _ := newTestPoster(t)
	p.queue = make(chan *corev1.Event, 2)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"}}
	done := make(chan struct{})
	go func() {
		for range 10 {
			p.Event(pod, corev1.EventTypeNormal, "R", "m")
		}
		// A kind it cannot name is dropped, not sent without a kind.
		p.Event(&corev1.ConfigMap{}, corev1.EventTypeNormal, "R", "m")
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Event blocked on a full queue")
	}
	if len(p.queue) != 2 {
		t.Fatalf("queue holds %d, want 2 (the rest dropped)", len(p.queue))
	}
}

func TestRecorderStops(t *testing.T) {
	cs := kubefake.NewClientset()
	r := NewRecorder(context.Background(), kfake.Kube(cs), "c", "h", nil)
	r.Event(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"}}, corev1.EventTypeNormal, "R", "m")
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, _ := cs.CoreV1().Events("a").List(context.Background(), metav1.ListOptions{})
		if len(l.Items) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("event not written")
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.Stop()
	(&Recorder{}).Stop() // a test's recorder without a poster
}

package kube

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/integration/k8senv"
	"github.com/patronus/patronus/kube/kclient"
)

// candidate runs one LeaderElection campaign after another, as mcs.Controller does.
type candidate struct {
	id      string
	leading atomic.Bool
	terms   atomic.Int32
	stop    context.CancelFunc
	done    chan struct{}
	lost    chan struct{} // closed when a term ends
	lostMu  sync.Mutex
}

func startCandidate(t *testing.T, leases kclient.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList], id string,
	release bool, both *atomic.Int32, twoLeaders *atomic.Bool) *candidate {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{id: id, stop: cancel, done: make(chan struct{}), lost: make(chan struct{})}
	le := &LeaderElection{Leases: leases, Name: "test-leader", Identity: id,
		LeaseDuration: leaseDuration, RenewDeadline: 6 * time.Second, RetryPeriod: time.Second,
		ReleaseOnCancel: release, Logger: slog.New(slog.DiscardHandler),
		OnStartedLeading: func(lctx context.Context) {
			if both.Add(1) > 1 {
				twoLeaders.Store(true)
			}
			c.leading.Store(true)
			c.terms.Add(1)
			<-lctx.Done()
			c.leading.Store(false)
			both.Add(-1)
			c.lostMu.Lock()
			close(c.lost)
			c.lost = make(chan struct{})
			c.lostMu.Unlock()
		}}
	go func() {
		defer close(c.done)
		for ctx.Err() == nil {
			if err := le.Run(ctx); err != nil {
				t.Errorf("%s: %v", id, err)
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-c.done })
	return c
}

// leaseDuration is generous: under CI's load an API call can take seconds, and a leader
// that misses its renew deadline would hand over in the middle of a check.
const leaseDuration = 8 * time.Second

func waitUntil(t *testing.T, what string, d time.Duration, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLeaderElectionValidates(t *testing.T) {
	for _, le := range []*LeaderElection{
		{},
		{Leases: nilLeases{}, Name: "l", Identity: "a", LeaseDuration: time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: time.Millisecond, OnStartedLeading: func(context.Context) {}},
		{Leases: nilLeases{}, Name: "l", Identity: "a", LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 2 * time.Second, OnStartedLeading: func(context.Context) {}},
		{Leases: nilLeases{}, Name: "l", Identity: "a", LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: time.Second},
	} {
		if err := le.Run(context.Background()); err == nil {
			t.Errorf("%+v: want a validation error", le)
		}
	}
}

// nilLeases is never called: validation fails first.
type nilLeases struct {
	kclient.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
}

// TestLeaderElection runs candidates against a real API server, whose resourceVersion
// check is what makes the election safe.
func TestLeaderElection(t *testing.T) {
	c := k8senv.Start(t)
	kc := c.AgentClient()
	ctx := context.Background()
	newNamespace := func(t *testing.T, ns string) {
		t.Helper()
		if _, err := kc.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("one leader; released on cancel; taken over", func(t *testing.T) {
		const ns = "le-release"
		newNamespace(t, ns)
		var both atomic.Int32
		var two atomic.Bool
		a := startCandidate(t, kc.Leases(ns), "a", true, &both, &two)
		waitUntil(t, "a leads", 30*time.Second, a.leading.Load)
		b := startCandidate(t, kc.Leases(ns), "b", true, &both, &two)
		time.Sleep(leaseDuration + time.Second) // longer than the lease: a renews, b must not take it
		if b.leading.Load() || !a.leading.Load() {
			t.Fatalf("a leading %v, b leading %v: a renews, so b must wait", a.leading.Load(), b.leading.Load())
		}
		a.stop()
		<-a.done
		l, err := kc.Leases(ns).Get(ctx, "test-leader", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if h := deref(l.Spec.HolderIdentity); h != "" && h != "b" {
			t.Fatalf("after a stopped, holder %q: ReleaseOnCancel must clear it", h)
		}
		waitUntil(t, "b leads after a released", 30*time.Second, b.leading.Load)
		l, err = kc.Leases(ns).Get(ctx, "test-leader", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if deref(l.Spec.HolderIdentity) != "b" || deref(l.Spec.LeaseTransitions) < 1 || l.Spec.AcquireTime == nil {
			t.Fatalf("lease after the takeover: %+v", l.Spec)
		}
		if two.Load() {
			t.Fatal("two candidates led at once")
		}
	})

	t.Run("a crashed leader's lease expires", func(t *testing.T) {
		const ns = "le-expire"
		newNamespace(t, ns)
		var both atomic.Int32
		var two atomic.Bool
		a := startCandidate(t, kc.Leases(ns), "a", false, &both, &two)
		waitUntil(t, "a leads", 30*time.Second, a.leading.Load)
		a.stop() // no release: like a killed agent
		<-a.done
		b := startCandidate(t, kc.Leases(ns), "b", false, &both, &two)
		start := time.Now()
		waitUntil(t, "b leads once a's lease expired", 60*time.Second, b.leading.Load)
		// b had to see the lease unchanged for its duration on its own clock.
		if d := time.Since(start); d < leaseDuration-time.Second {
			t.Fatalf("b took an unexpired lease after %s", d)
		}
	})

	t.Run("a leader that cannot renew stops leading", func(t *testing.T) {
		const ns = "le-lost"
		newNamespace(t, ns)
		var both atomic.Int32
		var two atomic.Bool
		a := startCandidate(t, kc.Leases(ns), "a", true, &both, &two)
		waitUntil(t, "a leads", 30*time.Second, a.leading.Load)
		a.lostMu.Lock()
		lost := a.lost
		a.lostMu.Unlock()
		// Someone else takes the Lease by force (an operator, a split brain): a's renewals
		// now find another holder with a valid lease.
		err := retryConflict(func() error {
			l, err := kc.Leases(ns).Get(ctx, "test-leader", metav1.GetOptions{})
			if err != nil {
				return err
			}
			other, dur, now := "intruder", int32(3600), metav1.NewMicroTime(time.Now())
			l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &other, &dur, &now
			_, err = kc.Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-lost:
		case <-time.After(30 * time.Second):
			t.Fatal("a still leads 30 s after losing the Lease (renew deadline 6 s)")
		}
		time.Sleep(time.Second)
		if a.leading.Load() {
			t.Fatal("a leads again while the intruder's lease is valid")
		}
	})
}

func retryConflict(f func() error) error {
	var err error
	for range 20 {
		if err = f(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.Join(errors.New("gave up"), err)
}

package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/kube/kclient"
)

// LeaderElection configures one campaign for a coordination/v1 Lease, with the semantics
// of client-go's leaderelection package (whose Lease lock imports the whole typed
// clientset): the Lease is taken with a compare-and-swap Update on its resourceVersion (or
// a Create), a holder renews it every RetryPeriod, a candidate takes it over only after
// seeing it unchanged for its leaseDurationSeconds on the candidate's own clock (no clock
// skew between nodes matters), and a leader that could not renew for RenewDeadline stops
// leading.
type LeaderElection struct {
	Leases   kclient.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] // in the Lease's namespace
	Name     string                                                             // the Lease
	Identity string                                                             // this candidate (holderIdentity)
	// LeaseDuration > RenewDeadline > RetryPeriod*1.2, as client-go requires.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// ReleaseOnCancel gives the Lease up when ctx ends while leading (holder cleared,
	// duration 1 s), so the next candidate need not wait for it to expire.
	ReleaseOnCancel bool

	// OnStartedLeading runs while this candidate leads; its ctx ends when leadership is
	// lost or Run's ctx ends. Run returns only after it returned.
	OnStartedLeading func(ctx context.Context)
	// OnNewLeader, if set, is told every holder seen (including this candidate).
	OnNewLeader func(identity string)
	Logger      *slog.Logger

	now func() time.Time // tests

	// Touched only by Run's goroutine.
	observed     coordinationv1.LeaseSpec
	observedAt   time.Time
	reported     string
	haveObserved bool
}

func (le *LeaderElection) validate() error {
	switch {
	case le.Leases == nil || le.Name == "" || le.Identity == "":
		return errors.New("leader election: Leases, Name and Identity are required")
	case le.LeaseDuration <= le.RenewDeadline:
		return errors.New("leader election: LeaseDuration must be greater than RenewDeadline")
	case le.RenewDeadline <= time.Duration(1.2*float64(le.RetryPeriod)):
		return errors.New("leader election: RenewDeadline must be greater than RetryPeriod*1.2")
	case le.RetryPeriod <= 0:
		return errors.New("leader election: RetryPeriod must be positive")
	case le.OnStartedLeading == nil:
		return errors.New("leader election: OnStartedLeading is required")
	}
	return nil
}

// Run campaigns until this candidate leads, leads until it cannot renew or ctx ends, and
// returns (after OnStartedLeading returned). Call it again to campaign again.
func (le *LeaderElection) Run(ctx context.Context) error {
	if err := le.validate(); err != nil {
		return err
	}
	if le.now == nil {
		le.now = time.Now
	}
	if le.Logger == nil {
		le.Logger = slog.New(slog.DiscardHandler)
	}
	if !le.acquire(ctx) {
		return nil
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { le.OnStartedLeading(lctx) })
	le.renew(ctx)
	cancel()
	wg.Wait()
	if ctx.Err() != nil && le.ReleaseOnCancel {
		le.release()
	}
	return nil
}

// sleep waits d (jittered up to +20 % like client-go's wait.JitterUntil) or ctx.
func sleep(ctx context.Context, d time.Duration, jitter bool) bool {
	if jitter {
		d += time.Duration(rand.Float64() * 0.2 * float64(d))
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// acquire tries every RetryPeriod until it holds the Lease or ctx ends.
func (le *LeaderElection) acquire(ctx context.Context) bool {
	for {
		if le.tryAcquireOrRenew(ctx) {
			le.Logger.Info("acquired lease", "lease", le.Name, "identity", le.Identity)
			return true
		}
		if !sleep(ctx, le.RetryPeriod, true) {
			return false
		}
	}
}

// renew keeps the Lease: every RetryPeriod a renewal, each retried every RetryPeriod for
// at most RenewDeadline; a renewal that does not succeed in time ends the leadership.
func (le *LeaderElection) renew(ctx context.Context) {
	for {
		if !sleep(ctx, le.RetryPeriod, false) {
			return
		}
		dctx, cancel := context.WithTimeout(ctx, le.RenewDeadline)
		ok := false
		for {
			if ok = le.tryAcquireOrRenew(dctx); ok || !sleep(dctx, le.RetryPeriod, false) {
				break
			}
		}
		cancel()
		if !ok {
			if ctx.Err() == nil {
				le.Logger.Warn("failed to renew lease; leadership lost", "lease", le.Name, "identity", le.Identity)
			}
			return
		}
	}
}

// tryAcquireOrRenew creates the Lease, or updates it when this candidate holds it or it
// expired. The Update carries the resourceVersion read, so of two candidates racing only
// one succeeds (the other gets a Conflict).
func (le *LeaderElection) tryAcquireOrRenew(ctx context.Context) bool {
	now := metav1.NewMicroTime(le.now())
	durSec := int32(le.LeaseDuration / time.Second)
	cur, err := le.Leases.Get(ctx, le.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		id := le.Identity
		transitions := int32(0)
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: le.Name},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &id, LeaseDurationSeconds: &durSec, AcquireTime: &now, RenewTime: &now,
				LeaseTransitions: &transitions}}
		created, err := le.Leases.Create(ctx, l, metav1.CreateOptions{})
		if err != nil {
			le.Logger.Debug("create lease", "lease", le.Name, "err", err)
			return false
		}
		le.observe(created)
		return true
	}
	if err != nil {
		le.Logger.Debug("get lease", "lease", le.Name, "err", err)
		return false
	}
	le.observe(cur)
	holder := deref(cur.Spec.HolderIdentity)
	expires := le.observedAt.Add(time.Duration(deref(cur.Spec.LeaseDurationSeconds)) * time.Second)
	if holder != "" && holder != le.Identity && expires.After(now.Time) {
		return false // held by another, not expired
	}
	upd := cur.DeepCopy()
	id := le.Identity
	upd.Spec.HolderIdentity = &id
	upd.Spec.LeaseDurationSeconds = &durSec
	upd.Spec.RenewTime = &now
	if holder != le.Identity {
		upd.Spec.AcquireTime = &now
		t := deref(cur.Spec.LeaseTransitions) + 1
		upd.Spec.LeaseTransitions = &t
	}
	out, err := le.Leases.Update(ctx, upd, metav1.UpdateOptions{})
	if err != nil {
		le.Logger.Debug("update lease", "lease", le.Name, "err", err)
		return false
	}
	le.observe(out)
	return true
}

// observe records the Lease as seen now when it changed since last seen (the local
// clock, not the holder's renewTime, decides expiry), and reports a new holder.
func (le *LeaderElection) observe(l *coordinationv1.Lease) {
	changed := !le.haveObserved || !sameSpec(le.observed, l.Spec)
	if changed {
		le.observed, le.observedAt, le.haveObserved = *l.Spec.DeepCopy(), le.now(), true
	}
	holder := deref(l.Spec.HolderIdentity)
	report := holder != le.reported
	le.reported = holder
	if report && holder != "" && le.OnNewLeader != nil {
		le.OnNewLeader(holder)
	}
}

func sameSpec(a, b coordinationv1.LeaseSpec) bool {
	eqTime := func(x, y *metav1.MicroTime) bool {
		if x == nil || y == nil {
			return x == y
		}
		return x.Equal(y)
	}
	return deref(a.HolderIdentity) == deref(b.HolderIdentity) && deref(a.LeaseDurationSeconds) == deref(b.LeaseDurationSeconds) &&
		deref(a.LeaseTransitions) == deref(b.LeaseTransitions) && eqTime(a.AcquireTime, b.AcquireTime) && eqTime(a.RenewTime, b.RenewTime)
}

// release clears the holder if this candidate still holds the Lease.
func (le *LeaderElection) release() {
	ctx, cancel := context.WithTimeout(context.Background(), le.RenewDeadline)
	defer cancel()
	cur, err := le.Leases.Get(ctx, le.Name, metav1.GetOptions{})
	if err != nil || deref(cur.Spec.HolderIdentity) != le.Identity {
		return
	}
	upd := cur.DeepCopy()
	now := metav1.NewMicroTime(le.now())
	one := int32(1)
	empty := ""
	upd.Spec.HolderIdentity, upd.Spec.LeaseDurationSeconds, upd.Spec.RenewTime, upd.Spec.AcquireTime = &empty, &one, &now, &now
	if _, err := le.Leases.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		le.Logger.Warn("release lease", "lease", le.Name, "err", fmt.Errorf("update: %w", err))
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

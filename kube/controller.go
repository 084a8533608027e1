package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Controller reconciles keys ("namespace/name" or "name") from a rate-limited workqueue.
// Reconcile is level-based: it must read the current state for the key (from listers,
// the database) and converge, never trust the event that queued the key.
type Controller struct {
	Name      string
	Reconcile func(ctx context.Context, key string) error
	Workers   int
	Logger    *slog.Logger
	// OnResult, if set, is told the outcome of every reconcile (for metrics).
	OnResult func(name string, err error)

	queue workqueue.TypedRateLimitingInterface[string]
	once  sync.Once
}

func (c *Controller) init() {
	c.once.Do(func() {
		// Per-item exponential backoff from 50ms to 5 minutes, plus the overall token
		// bucket, like controller-runtime: a failing key never spins, a healthy one is fast.
		rl := workqueue.NewTypedMaxOfRateLimiter(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 5*time.Minute),
			&workqueue.TypedBucketRateLimiter[string]{Limiter: newLimiter()},
		)
		c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(rl, workqueue.TypedRateLimitingQueueConfig[string]{Name: c.Name})
		if c.Logger == nil {
			c.Logger = slog.New(slog.DiscardHandler)
		}
		if c.Workers <= 0 {
			c.Workers = 1
		}
	})
}

// Enqueue adds a key.
func (c *Controller) Enqueue(key string) {
	c.init()
	c.queue.Add(key)
}

// EnqueueAfter adds a key after d.
func (c *Controller) EnqueueAfter(key string, d time.Duration) {
	c.init()
	c.queue.AddAfter(key, d)
}

// Len is the number of keys waiting.
func (c *Controller) Len() int {
	c.init()
	return c.queue.Len()
}

// Handler returns informer event handlers that enqueue the object's key. Deletions whose
// final state was missed arrive as cache.DeletedFinalStateUnknown; the key is taken from
// the tombstone so the reconcile still runs and sees the object gone. Resync updates
// (same resource version) are enqueued too: that is what makes the resync periodic.
func (c *Controller) Handler() cache.ResourceEventHandler {
	c.init()
	return HandlerFunc(c.Logger, c.Name, c.Enqueue)
}

// HandlerFunc returns informer event handlers that call enqueue with each object's key,
// tombstones included.
func HandlerFunc(logger *slog.Logger, name string, enqueue func(key string)) cache.ResourceEventHandler {
	add := func(obj any) {
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			logger.Warn("cannot compute key of object", "controller", name, "err", err)
			return
		}
		enqueue(key)
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    add,
		UpdateFunc: func(_, obj any) { add(obj) },
		DeleteFunc: add,
	}
}

// Run starts the workers and blocks until ctx is done, then shuts the queue down and
// waits for the workers to finish their current key. Callers must have waited for the
// informers' caches to sync: a reconcile against an empty cache would see everything gone.
func (c *Controller) Run(ctx context.Context) {
	c.init()
	var wg sync.WaitGroup
	for range c.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c.processNext(ctx) {
			}
		}()
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(key)
	err := c.safeReconcile(ctx, key)
	if c.OnResult != nil {
		c.OnResult(c.Name, err)
	}
	if err == nil {
		c.queue.Forget(key)
		return true
	}
	if ctx.Err() != nil {
		return true
	}
	c.Logger.Warn("reconcile failed, retrying with backoff", "controller", c.Name, "key", key,
		"attempt", c.queue.NumRequeues(key)+1, "err", err)
	c.queue.AddRateLimited(key)
	return true
}

// safeReconcile turns a panic in a reconcile into an error: one bad object must not take
// the node agent (and with it, pod networking) down.
func (c *Controller) safeReconcile(ctx context.Context, key string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in %s reconcile of %q: %v", c.Name, key, r)
		}
	}()
	return c.Reconcile(ctx, key)
}

// StripManagedFields is an informer transform that drops metadata.managedFields before
// objects enter the cache: the agent never reads them, and they are often the largest
// part of an object.
func StripManagedFields(obj any) (any, error) {
	if acc, err := meta.Accessor(obj); err == nil {
		acc.SetManagedFields(nil)
	}
	return obj, nil
}

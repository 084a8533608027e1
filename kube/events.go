package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/patronus/patronus/kube/kclient"
)

// EventRecorder records an Event about an object (client-go's record.FakeRecorder
// satisfies it, for tests).
type EventRecorder interface {
	Event(object runtime.Object, eventtype, reason, message string)
}

// Recorder emits Kubernetes core/v1 Events: asynchronously, best effort, with
// client-go's record package's behaviour on the wire (event names, counts, the per-object
// spam filter, Patch of a repeated event) without that package, which links the
// strategic-merge-patch and OpenAPI machinery into every CNI call.
//
// Differences from client-go: events whose messages differ are never combined into one
// "(combined from similar events)" event; the agent reports each condition once per onset
// itself (eventDedup, podPaths.reported).
type Recorder struct {
	EventRecorder
	stop func()
}

// Stop ends the poster; queued events not yet written are dropped.
func (r *Recorder) Stop() {
	if r.stop != nil {
		r.stop()
	}
}

// Limits as client-go's record package: the queue is dropped from when full, a source may
// post 25 events per object at once and then one per 5 minutes, and the identity of at
// most 4096 recent events is kept for counting repeats.
const (
	eventQueue       = 1000
	eventBurst       = 25
	eventRefill      = 5 * time.Minute
	eventCacheSize   = 4096
	eventRetries     = 12
	eventRetryPeriod = 10 * time.Second
)

// NewRecorder starts an Event poster writing through k and returns a recorder whose
// events name component and host as their source. Call Stop on shutdown.
func NewRecorder(ctx context.Context, k kclient.Kube, component, host string, logger *slog.Logger) *Recorder {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &eventPoster{k: k, source: corev1.EventSource{Component: component, Host: host}, log: logger,
		queue: make(chan *corev1.Event, eventQueue), now: time.Now, retryPeriod: eventRetryPeriod,
		seen: map[string]*seenEvent{}, buckets: map[string]*bucket{}}
	var wg sync.WaitGroup
	wg.Go(func() { p.run(ctx) })
	return &Recorder{EventRecorder: p, stop: func() { cancel(); wg.Wait() }}
}

type eventPoster struct {
	k           kclient.Kube
	source      corev1.EventSource
	log         *slog.Logger
	queue       chan *corev1.Event
	now         func() time.Time
	retryPeriod time.Duration

	// Touched only by run's goroutine.
	seen    map[string]*seenEvent // identity -> the event as last written
	order   []string              // identities, oldest first (eviction)
	buckets map[string]*bucket    // per source and object: the spam filter
}

type seenEvent struct {
	name      string
	namespace string
	count     int32
	first     metav1.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

// Event implements EventRecorder: it never blocks (a full queue drops the event).
func (p *eventPoster) Event(obj runtime.Object, eventtype, reason, message string) {
	ref, err := objectReference(obj)
	if err != nil {
		p.log.Debug("event not recorded", "reason", reason, "err", err)
		return
	}
	t := metav1.NewTime(p.now())
	ns := ref.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	e := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: ref.Name + "." + strconv.FormatInt(t.UnixNano(), 16), Namespace: ns},
		InvolvedObject: *ref, Reason: reason, Message: message, Type: eventtype,
		FirstTimestamp: t, LastTimestamp: t, Count: 1, Source: p.source,
	}
	p.log.Debug("event", "object", ref.Namespace+"/"+ref.Name, "type", eventtype, "reason", reason, "message", message)
	select {
	case p.queue <- e:
	default:
		p.log.Warn("event queue full; event dropped", "object", ref.Namespace+"/"+ref.Name, "reason", reason)
	}
}

// objectReference is the involved object: kind and API version from the object's type
// meta or, for objects from informers (whose type meta is empty), from the kinds the agent
// reports on.
func objectReference(obj runtime.Object) (*corev1.ObjectReference, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, err
	}
	gvk := obj.GetObjectKind().GroupVersionKind()
	if gvk.Kind == "" {
		switch obj.(type) {
		case *corev1.Pod:
			gvk = corev1.SchemeGroupVersion.WithKind("Pod")
		case *corev1.Node:
			gvk = corev1.SchemeGroupVersion.WithKind("Node")
		case *corev1.Namespace:
			gvk = corev1.SchemeGroupVersion.WithKind("Namespace")
		case *corev1.Service:
			gvk = corev1.SchemeGroupVersion.WithKind("Service")
		default:
			return nil, fmt.Errorf("no kind for %T", obj)
		}
	}
	apiVersion, kind := gvk.ToAPIVersionAndKind()
	return &corev1.ObjectReference{Kind: kind, APIVersion: apiVersion, Namespace: m.GetNamespace(), Name: m.GetName(),
		UID: m.GetUID(), ResourceVersion: m.GetResourceVersion()}, nil
}

func (p *eventPoster) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-p.queue:
			p.post(ctx, e)
		}
	}
}

// identity is what makes two events the same one, counted (client-go's
// EventCorrelator key: source, object, type, reason and message).
func identity(e *corev1.Event) string {
	o := e.InvolvedObject
	return fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s", e.Source.Component, e.Source.Host,
		o.Kind, o.Namespace, o.Name, o.UID, o.APIVersion, e.Type, e.Reason, e.Message)
}

// allow is the per-object token bucket (client-go's EventSourceObjectSpamFilter).
func (p *eventPoster) allow(e *corev1.Event) bool {
	o := e.InvolvedObject
	key := e.Source.Component + "\x00" + e.Source.Host + "\x00" + o.Kind + "\x00" + o.Namespace + "\x00" + o.Name + "\x00" + string(o.UID)
	now := p.now()
	b, ok := p.buckets[key]
	if !ok {
		if len(p.buckets) >= eventCacheSize {
			clear(p.buckets) // a rare reset lets at most a burst through per object
		}
		b = &bucket{tokens: eventBurst, at: now}
		p.buckets[key] = b
	}
	b.tokens = min(eventBurst, b.tokens+now.Sub(b.at).Seconds()/eventRefill.Seconds())
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// post writes e: a repeat of an event written before is a Patch of its count and last
// timestamp (a Create when that event is gone), anything else a Create. Transport errors
// are retried; an answer from the API server is final.
func (p *eventPoster) post(ctx context.Context, e *corev1.Event) {
	if !p.allow(e) {
		p.log.Debug("event dropped by the per-object rate limit", "object", e.InvolvedObject.Namespace+"/"+e.InvolvedObject.Name,
			"reason", e.Reason)
		return
	}
	id := identity(e)
	prev := p.seen[id]
	for try := 1; ; try++ {
		written, err := p.write(ctx, e, prev)
		if err == nil {
			if prev == nil {
				p.remember(id)
			}
			p.seen[id] = &seenEvent{name: written.Name, namespace: written.Namespace, count: written.Count, first: written.FirstTimestamp}
			return
		}
		var se apierrors.APIStatus
		if errors.As(err, &se) || try >= eventRetries || ctx.Err() != nil {
			if apierrors.IsAlreadyExists(err) || apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
				p.log.Debug("event rejected", "reason", e.Reason, "err", err)
			} else {
				p.log.Warn("event not written", "object", e.InvolvedObject.Namespace+"/"+e.InvolvedObject.Name, "reason", e.Reason, "err", err)
			}
			return
		}
		p.log.Debug("event not written yet, retrying", "reason", e.Reason, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.retryPeriod):
		}
	}
}

func (p *eventPoster) write(ctx context.Context, e *corev1.Event, prev *seenEvent) (*corev1.Event, error) {
	if prev != nil {
		patch, err := json.Marshal(map[string]any{"count": prev.count + 1, "lastTimestamp": e.LastTimestamp, "message": e.Message})
		if err != nil {
			return nil, err
		}
		out, err := p.k.Events(prev.namespace).Patch(ctx, prev.name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
		if !apierrors.IsNotFound(err) {
			return out, err
		}
	}
	c := e.DeepCopy()
	c.ResourceVersion = ""
	return p.k.Events(c.Namespace).Create(ctx, c, metav1.CreateOptions{})
}

// remember keeps at most eventCacheSize identities, forgetting the oldest.
func (p *eventPoster) remember(id string) {
	p.order = append(p.order, id)
	if len(p.order) > eventCacheSize {
		delete(p.seen, p.order[0])
		p.order = p.order[1:]
	}
}

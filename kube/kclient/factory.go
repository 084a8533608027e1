package kclient

import (
	"context"
	"reflect"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

// FactoryOptions narrow what a Factory's informers watch.
type FactoryOptions struct {
	// Namespace limits namespaced kinds to one namespace ("": all).
	Namespace string
	// Resync is the informers' resync period (0: none).
	Resync time.Duration
	// Tweak edits every list and watch request (label or field selector).
	Tweak func(*metav1.ListOptions)
	// Transform is set on every informer (e.g. to drop managed fields before caching).
	Transform cache.TransformFunc
}

// Factory hands out one shared informer per kind, like client-go's
// SharedInformerFactory: informers asked for before Start are started by it, each with
// a namespace index so client-go's listers (k8s.io/client-go/listers/...) work on their
// indexers.
type Factory struct {
	kube Kube
	mcs  MCS
	o    FactoryOptions

	mu        sync.Mutex
	informers map[reflect.Type]cache.SharedIndexInformer
	started   map[reflect.Type]bool
	wg        sync.WaitGroup
	cancel    []context.CancelFunc
	shutdown  bool
}

// NewFactory returns a factory over kube and mcs (either may be nil if its kinds are not
// asked for).
func NewFactory(kube Kube, mcs MCS, o FactoryOptions) *Factory {
	return &Factory{kube: kube, mcs: mcs, o: o, informers: map[reflect.Type]cache.SharedIndexInformer{},
		started: map[reflect.Type]bool{}}
}

// informerFor returns the factory's informer for example's type, creating it over
// list/watch on first use.
func informerFor[T, L runtime.Object](f *Factory, src any, example T, r Resource[T, L]) cache.SharedIndexInformer {
	typ := reflect.TypeOf(example)
	f.mu.Lock()
	defer f.mu.Unlock()
	if inf, ok := f.informers[typ]; ok {
		return inf
	}
	tweak := f.o.Tweak
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			if tweak != nil {
				tweak(&opts)
			}
			return r.List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			if tweak != nil {
				tweak(&opts)
			}
			return r.Watch(ctx, opts)
		},
	}
	// src's IsWatchListSemanticsUnSupported (fake clientsets answer true) makes the
	// reflector list and watch instead of streaming the initial list.
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, src), example, f.o.Resync, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if f.o.Transform != nil {
		// Only fails once the informer runs; it has not started.
		_ = inf.SetTransform(f.o.Transform)
	}
	f.informers[typ] = inf
	return inf
}

func (f *Factory) Pods() cache.SharedIndexInformer {
	return informerFor(f, f.kube, &corev1.Pod{}, f.kube.Pods(f.o.Namespace))
}

func (f *Factory) Nodes() cache.SharedIndexInformer {
	return informerFor(f, f.kube, &corev1.Node{}, f.kube.Nodes())
}

func (f *Factory) Namespaces() cache.SharedIndexInformer {
	return informerFor(f, f.kube, &corev1.Namespace{}, f.kube.Namespaces())
}

func (f *Factory) Services() cache.SharedIndexInformer {
	return informerFor(f, f.kube, &corev1.Service{}, f.kube.Services(f.o.Namespace))
}

func (f *Factory) ConfigMaps() cache.SharedIndexInformer {
	return informerFor(f, f.kube, &corev1.ConfigMap{}, f.kube.ConfigMaps(f.o.Namespace))
}

func (f *Factory) NetworkPolicies() cache.SharedIndexInformer {
	return informerFor(f, f.kube, &networkingv1.NetworkPolicy{}, f.kube.NetworkPolicies(f.o.Namespace))
}

func (f *Factory) EndpointSlices() cache.SharedIndexInformer {
	return informerFor(f, f.kube, &discoveryv1.EndpointSlice{}, f.kube.EndpointSlices(f.o.Namespace))
}

func (f *Factory) Leases() cache.SharedIndexInformer {
	return informerFor(f, f.kube, &coordinationv1.Lease{}, f.kube.Leases(f.o.Namespace))
}

func (f *Factory) ServiceExports() cache.SharedIndexInformer {
	return informerFor(f, f.mcs, &mcsv1beta1.ServiceExport{}, Resource[*mcsv1beta1.ServiceExport, *mcsv1beta1.ServiceExportList](f.mcs.ServiceExports(f.o.Namespace)))
}

func (f *Factory) ServiceImports() cache.SharedIndexInformer {
	return informerFor(f, f.mcs, &mcsv1beta1.ServiceImport{}, Resource[*mcsv1beta1.ServiceImport, *mcsv1beta1.ServiceImportList](f.mcs.ServiceImports(f.o.Namespace)))
}

// Start runs every informer asked for so far that is not running yet, until stop is
// closed or Shutdown.
func (f *Factory) Start(stop <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shutdown {
		return
	}
	for typ, inf := range f.informers {
		if f.started[typ] {
			continue
		}
		f.started[typ] = true
		ctx, cancel := context.WithCancel(context.Background())
		f.cancel = append(f.cancel, cancel)
		f.wg.Go(func() {
			go func() {
				select {
				case <-stop:
					cancel()
				case <-ctx.Done():
				}
			}()
			inf.RunWithContext(ctx)
		})
	}
}

// WaitForCacheSync waits until every started informer has synced or stop is closed, and
// reports per type whether it synced.
func (f *Factory) WaitForCacheSync(stop <-chan struct{}) map[reflect.Type]bool {
	f.mu.Lock()
	infs := map[reflect.Type]cache.SharedIndexInformer{}
	for typ, inf := range f.informers {
		if f.started[typ] {
			infs[typ] = inf
		}
	}
	f.mu.Unlock()
	out := map[reflect.Type]bool{}
	for typ, inf := range infs {
		out[typ] = cache.WaitForCacheSync(stop, inf.HasSynced)
	}
	return out
}

// Shutdown stops the informers and waits for them to return.
func (f *Factory) Shutdown() {
	f.mu.Lock()
	f.shutdown = true
	for _, c := range f.cancel {
		c()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

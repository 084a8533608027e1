package agent

import (
	"context"
	"sync"
	"time"

	"github.com/patronus/patronus/kube"
	"github.com/patronus/patronus/kube/kclient"
	"k8s.io/client-go/tools/cache"
)

// Kinds the agent watches besides its node's pods.
const (
	kindNamespaces      = "namespaces"
	kindNetworkPolicies = "networkpolicies"
	kindServices        = "services"
	kindEndpointSlices  = "endpointslices"
	kindServiceExports  = "serviceexports"
	kindServiceImports  = "serviceimports"
)

// seenSet is the set of keys of one kind present in the API, maintained per key by a
// level-based reconcile (present in the informer's store or not), so counts stay right
// across missed deletions and relists.
type seenSet struct {
	mu   sync.Mutex
	keys map[string]struct{}
}

func newSeenSets() map[string]*seenSet {
	m := map[string]*seenSet{}
	for _, k := range []string{kindNamespaces, kindNetworkPolicies, kindServices, kindEndpointSlices, kindServiceExports, kindServiceImports} {
		m[k] = &seenSet{keys: map[string]struct{}{}}
	}
	return m
}

func (s *seenSet) set(key string, present bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if present {
		s.keys[key] = struct{}{}
	} else {
		delete(s.keys, key)
	}
}

func (s *seenSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}

// observer is the controller for a kind the agent only tracks for now. Policy, service
// and mesh reconcilers of later issues hang off the same queues.
func (a *agent) observer(kind string, store cache.Store) *kube.Controller {
	set := a.seen[kind]
	return &kube.Controller{
		Name:     kind,
		Workers:  1,
		Logger:   a.log,
		OnResult: a.metrics.result,
		Reconcile: func(_ context.Context, key string) error {
			_, exists, err := store.GetByKey(key)
			if err != nil {
				return err
			}
			set.set(key, exists)
			a.metrics.objects.WithLabelValues(kind).Set(float64(set.len()))
			return nil
		},
	}
}

// runMCS watches ServiceExport and ServiceImport once the MCS CRDs exist. Clusters
// without them are normal (the CRDs are an optional add-on): the agent says so and looks
// again every MCSRetryInterval instead of failing.
func (a *agent) runMCS(ctx context.Context) {
	lastErr, logged := "", false
	for {
		ok, err := kube.MCSAvailable(a.clients.MCS)
		switch {
		case err != nil && err.Error() != lastErr:
			// Once per distinct error: an API outage must not flood the log.
			a.log.Warn("cannot look for the MCS API", "groupVersion", kube.MCSGroupVersion, "err", err, "retryEvery", a.opts.MCSRetryInterval)
			lastErr = err.Error()
		case err == nil && !ok && !logged:
			a.log.Info("MCS API (ServiceExport/ServiceImport CRDs) not installed; multi-cluster services disabled until it is",
				"groupVersion", kube.MCSGroupVersion, "retryEvery", a.opts.MCSRetryInterval)
			logged = true
		}
		if err == nil {
			lastErr = ""
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(a.opts.MCSRetryInterval):
		}
	}
	a.log.Info("MCS API found, watching ServiceExports and ServiceImports", "groupVersion", kube.MCSGroupVersion)
	f := kclient.NewFactory(nil, a.clients.MCS, kclient.FactoryOptions{Resync: a.opts.ResyncPeriod})
	exp, imp := f.ServiceExports(), f.ServiceImports()
	ce, ci := a.observer(kindServiceExports, exp.GetIndexer()), a.observer(kindServiceImports, imp.GetIndexer())
	if _, err := exp.AddEventHandler(ce.Handler()); err != nil {
		a.log.Error("ServiceExport informer", "err", err)
		return
	}
	if _, err := imp.AddEventHandler(ci.Handler()); err != nil {
		a.log.Error("ServiceImport informer", "err", err)
		return
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), exp.HasSynced, imp.HasSynced) {
		return
	}
	a.mcsUp.Store(true)
	a.metrics.mcs.Set(1)
	var wg sync.WaitGroup
	wg.Go(func() { ce.Run(ctx) })
	wg.Go(func() { ci.Run(ctx) })
	wg.Wait()
}

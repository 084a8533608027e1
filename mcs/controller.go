// Package mcs implements the Multi-Cluster Services API (KEP-1645, sigs.k8s.io/mcs-api
// v1beta1) without a broker: each cluster's ServiceExports travel to the other clusters
// through an Announcer (the mesh's signed `service` announcements in production), and in
// every cluster one agent, chosen by a Lease, turns the exports of all clusters into
// ServiceImports (with a ClusterSetIP) and one EndpointSlice per remote cluster.
//
// The controller is level-based: every change (an informer event, a new announcement
// version, a periodic resync) triggers one full reconciliation that reads the observed
// state and makes the API objects match it. The merge rules and the ClusterSetIP choice
// are the pure package mcs/resolve.
package mcs

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcslisters "sigs.k8s.io/mcs-api/pkg/client/listers/apis/v1beta1"

	"github.com/patronus/patronus/kube"
	"github.com/patronus/patronus/kube/kclient"
	"github.com/patronus/patronus/mcs/resolve"
	"github.com/patronus/patronus/qos"
)

// Names users see (docs/CONTRACT.md).
const (
	// DefaultLeaseName is the Lease that picks the one agent per cluster doing MCS work.
	DefaultLeaseName = "patronus-mcs-leader"
	// LabelManagedBy marks ServiceImports and EndpointSlices this controller owns.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedByValue = "patronus"
	// EndpointSliceManagedBy keeps Kubernetes' EndpointSlice controllers off our slices.
	EndpointSliceManagedBy = "mcs.patronus.io"
)

// Options configures a Controller.
type Options struct {
	Kube kclient.Kube
	MCS  kclient.MCS
	// ClusterID is this cluster's id in the clusterset (the source-cluster label value).
	ClusterID string
	// Identity is this agent's name in the leader Lease (the node name).
	Identity string
	// LeaseNamespace (default kube-system) and LeaseName (default patronus-mcs-leader).
	LeaseNamespace string
	LeaseName      string
	// Leader election timing (defaults 15s, 10s, 2s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration

	Announcer Announcer
	// ClusterSetIPRange is where ClusterSetIPs come from (default
	// resolve.DefaultClusterSetIPRange). Reserved are the ranges it must not overlap (the
	// cluster's pod and service CIDRs, node networks): New fails if it does.
	ClusterSetIPRange netip.Prefix
	Reserved          []netip.Prefix

	// PollInterval is how often the Announcer's version is checked (default 250ms);
	// Resync forces a full reconciliation (default 1m); CRDWait is how often a missing MCS
	// API is looked for again (default 30s).
	PollInterval time.Duration
	Resync       time.Duration
	CRDWait      time.Duration

	Logger *slog.Logger
}

// Controller runs the export and import sides.
type Controller struct {
	o     Options
	log   *slog.Logger
	nudge chan struct{}

	services   corelisters.ServiceLister
	namespaces corelisters.NamespaceLister
	slices     discoverylisters.EndpointSliceLister
	exports    mcslisters.ServiceExportLister
	imports    mcslisters.ServiceImportLister

	mu        sync.Mutex
	published map[string]resolve.Export // ns/name -> what this agent announced
	warned    map[string]bool           // namespace-missing warnings already logged
	leading   bool
}

// New validates o and returns a controller; Run starts it.
func New(o Options) (*Controller, error) {
	if o.Kube == nil || o.MCS == nil || o.Announcer == nil {
		return nil, errors.New("mcs: Kube, MCS clients and an Announcer are required")
	}
	if o.ClusterID == "" || o.Identity == "" {
		return nil, errors.New("mcs: cluster id and identity are required")
	}
	if errs := validationLabelValue(o.ClusterID); errs != "" {
		return nil, fmt.Errorf("mcs: cluster id %q cannot be a label value (%s)", o.ClusterID, errs)
	}
	if !o.ClusterSetIPRange.IsValid() {
		o.ClusterSetIPRange = netip.MustParsePrefix(resolve.DefaultClusterSetIPRange)
	}
	o.ClusterSetIPRange = o.ClusterSetIPRange.Masked()
	for _, r := range o.Reserved {
		if r.IsValid() && r.Overlaps(o.ClusterSetIPRange) {
			return nil, fmt.Errorf("mcs: clusterset IP range %s overlaps %s (pod, service or node range): choose another clusterset-ip-range", o.ClusterSetIPRange, r)
		}
	}
	o.LeaseNamespace = cmp.Or(o.LeaseNamespace, "kube-system")
	o.LeaseName = cmp.Or(o.LeaseName, DefaultLeaseName)
	o.LeaseDuration = cmp.Or(o.LeaseDuration, 15*time.Second)
	o.RenewDeadline = cmp.Or(o.RenewDeadline, 10*time.Second)
	o.RetryPeriod = cmp.Or(o.RetryPeriod, 2*time.Second)
	o.PollInterval = cmp.Or(o.PollInterval, 250*time.Millisecond)
	o.Resync = cmp.Or(o.Resync, time.Minute)
	o.CRDWait = cmp.Or(o.CRDWait, 30*time.Second)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Controller{o: o, log: o.Logger.With("component", "mcs", "cluster", o.ClusterID),
		nudge: make(chan struct{}, 1), published: map[string]resolve.Export{}, warned: map[string]bool{}}, nil
}

func validationLabelValue(v string) string {
	if len(v) > 63 {
		return "longer than 63 characters"
	}
	for i, r := range v {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			(r == '-' || r == '_' || r == '.') && i > 0 && i < len(v)-1
		if !ok {
			return "only alphanumerics, '-', '_' and '.' inside"
		}
	}
	return ""
}

// Leading reports whether this agent currently holds the MCS Lease.
func (c *Controller) Leading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leading
}

func (c *Controller) trigger() {
	select {
	case c.nudge <- struct{}{}:
	default:
	}
}

// Run waits for the MCS API, starts the informers and campaigns for the Lease; while it
// leads it reconciles. It returns when ctx ends, after withdrawing what it announced.
func (c *Controller) Run(ctx context.Context) error {
	if err := c.waitForAPI(ctx); err != nil {
		return err
	}
	kf := kclient.NewFactory(c.o.Kube, c.o.MCS, kclient.FactoryOptions{})
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.trigger() },
		UpdateFunc: func(any, any) { c.trigger() },
		DeleteFunc: func(any) { c.trigger() },
	}
	svcInf, nsInf, slInf := kf.Services(), kf.Namespaces(), kf.EndpointSlices()
	expInf, impInf := kf.ServiceExports(), kf.ServiceImports()
	for _, inf := range []cache.SharedIndexInformer{svcInf, nsInf, slInf, expInf, impInf} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("mcs: informer handler: %w", err)
		}
	}
	c.services = corelisters.NewServiceLister(svcInf.GetIndexer())
	c.namespaces = corelisters.NewNamespaceLister(nsInf.GetIndexer())
	c.slices = discoverylisters.NewEndpointSliceLister(slInf.GetIndexer())
	c.exports = mcslisters.NewServiceExportLister(expInf.GetIndexer())
	c.imports = mcslisters.NewServiceImportLister(impInf.GetIndexer())
	kf.Start(ctx.Done())
	defer kf.Shutdown()
	for typ, ok := range kf.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("mcs: cache of %v did not sync: %w", typ, ctx.Err())
		}
	}
	le := &kube.LeaderElection{
		Leases: c.o.Kube.Leases(c.o.LeaseNamespace), Name: c.o.LeaseName, Identity: c.o.Identity,
		LeaseDuration: c.o.LeaseDuration, RenewDeadline: c.o.RenewDeadline, RetryPeriod: c.o.RetryPeriod,
		ReleaseOnCancel: true, OnStartedLeading: c.lead, Logger: c.log,
		OnNewLeader: func(id string) {
			c.log.Info("MCS leader", "holder", id, "self", id == c.o.Identity)
		},
	}
	for ctx.Err() == nil {
		if err := le.Run(ctx); err != nil { // returns when leadership is lost or ctx ends
			return fmt.Errorf("mcs: leader election: %w", err)
		}
	}
	return nil
}

func (c *Controller) waitForAPI(ctx context.Context) error {
	for {
		_, err := c.o.MCS.ServerResourcesForGroupVersion(mcsv1beta1.GroupVersion.String())
		if err == nil {
			return nil
		}
		c.log.Warn("MCS API not served; multi-cluster services are off until its CRDs are installed", "groupVersion", mcsv1beta1.GroupVersion.String(), "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.o.CRDWait):
		}
	}
}

// lead reconciles until ctx ends (leadership lost or shutdown), then withdraws this
// agent's announcements so other clusters drop its endpoints at once.
func (c *Controller) lead(ctx context.Context) {
	c.mu.Lock()
	c.leading = true
	c.mu.Unlock()
	c.log.Info("leading MCS reconciliation")
	defer func() {
		c.mu.Lock()
		c.leading = false
		pub := c.published
		c.published = map[string]resolve.Export{}
		c.mu.Unlock()
		for _, e := range pub {
			if err := c.o.Announcer.Withdraw(e.Namespace, e.Name); err != nil {
				c.log.Warn("withdraw export", "service", e.Key(), "err", err)
			}
		}
	}()
	poll := time.NewTicker(c.o.PollInterval)
	defer poll.Stop()
	resync := time.NewTicker(c.o.Resync)
	defer resync.Stop()
	var seen uint64
	var lastErr string
	c.trigger()
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			if v, _ := c.o.Announcer.Exports(); v == seen {
				continue
			}
		case <-resync.C:
		case <-c.nudge:
			// Coalesce a burst of informer events into one pass.
			select {
			case <-ctx.Done():
				return
			case <-time.After(30 * time.Millisecond):
			}
			select {
			case <-c.nudge:
			default:
			}
		}
		v, _ := c.o.Announcer.Exports()
		if err := c.Sync(ctx); err != nil {
			// A persistent error is logged once, not every retry.
			if err.Error() != lastErr {
				c.log.Warn("MCS reconciliation incomplete; retrying every second", "err", err)
			}
			lastErr = err.Error()
			time.AfterFunc(time.Second, c.trigger)
		} else {
			lastErr = ""
		}
		seen = v
	}
}

// Sync is one full reconciliation (exported for tests that drive it directly).
func (c *Controller) Sync(ctx context.Context) error {
	var errs []error
	local := c.syncExports(ctx, &errs)
	_, all := c.o.Announcer.Exports()
	// This cluster's exports come from the local view (the announcer may not have echoed
	// the latest yet); everyone else's from the announcer.
	merged := make([]resolve.Export, 0, len(all)+len(local))
	for _, e := range all {
		if e.Cluster != c.o.ClusterID {
			merged = append(merged, e)
		}
	}
	for _, st := range local {
		if st.export != nil {
			merged = append(merged, *st.export)
		}
	}
	groups := resolve.Group(merged)
	c.syncImports(ctx, groups, &errs)
	// Conflict conditions on this cluster's exports, then their status.
	for key, st := range local {
		if st.export != nil {
			im := resolve.Merge(groups[key])
			st.setConflicts(im)
		}
		if err := c.writeExportStatus(ctx, st); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// exportState is one local ServiceExport being reconciled.
type exportState struct {
	se     *mcsv1beta1.ServiceExport
	conds  []metav1.Condition
	export *resolve.Export // nil when invalid
}

func (st *exportState) set(t mcsv1beta1.ServiceExportConditionType, s metav1.ConditionStatus, reason mcsv1beta1.ServiceExportConditionReason, msg string) {
	meta.SetStatusCondition(&st.conds, metav1.Condition{Type: string(t), Status: s, Reason: string(reason),
		Message: msg, ObservedGeneration: st.se.Generation})
}

func (st *exportState) setConflicts(im resolve.Import) {
	if len(im.Conflicts) == 0 {
		st.set(mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonNoConflicts,
			fmt.Sprintf("no conflicts with the exports of %s", strings.Join(im.Clusters, ", ")))
		return
	}
	var msgs []string
	for _, cf := range im.Conflicts {
		msgs = append(msgs, cf.Message)
	}
	// The condition has one reason: the first conflict's (type, then affinity, then ports).
	st.set(mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionTrue,
		mcsv1beta1.ServiceExportConditionReason(im.Conflicts[0].Reason), strings.Join(msgs, " | "))
}

// syncExports validates the local ServiceExports, announces the valid ones and withdraws
// what is no longer exported.
func (c *Controller) syncExports(ctx context.Context, errs *[]error) map[string]*exportState {
	list, err := c.exports.List(labels.Everything())
	if err != nil {
		*errs = append(*errs, fmt.Errorf("list ServiceExports: %w", err))
		return nil
	}
	out := map[string]*exportState{}
	for _, se := range list {
		st := &exportState{se: se, conds: slices.Clone(se.Status.Conditions)}
		key := se.Namespace + "/" + se.Name
		out[key] = st
		if se.DeletionTimestamp != nil {
			continue
		}
		svc, err := c.services.Services(se.Namespace).Get(se.Name)
		switch {
		case apierrors.IsNotFound(err):
			st.set(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonNoService,
				fmt.Sprintf("Service %s not found: create a Service named %s in namespace %s, or delete this ServiceExport", key, se.Name, se.Namespace))
		case err != nil:
			*errs = append(*errs, fmt.Errorf("get Service %s: %w", key, err))
			continue
		case svc.Spec.Type == corev1.ServiceTypeExternalName:
			st.set(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonInvalidServiceType,
				fmt.Sprintf("Service %s is of type ExternalName, which cannot be exported: export a ClusterIP or headless Service instead", key))
		default:
			e := c.exportOf(se, svc)
			st.export = &e
			msg := fmt.Sprintf("Service %s is exported as %s", key, e.Type)
			if _, err := ServiceClass(svc.Labels); err != nil {
				msg += "; " + err.Error()
			} else if e.QoSClass != "" {
				msg += " with QoS class " + e.QoSClass
			}
			st.set(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonValid, msg)
		}
		if st.export == nil {
			st.set(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonPending,
				"not exported to the clusterset: the export is not valid (see condition Valid)")
			meta.RemoveStatusCondition(&st.conds, string(mcsv1beta1.ServiceExportConditionConflict))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, st := range out {
		if st.export == nil {
			continue
		}
		if old, ok := c.published[key]; !ok || !old.Equal(*st.export) {
			if err := c.o.Announcer.Publish(*st.export); err != nil {
				st.set(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonFailed,
					fmt.Sprintf("could not announce the export to the other clusters: %v", err))
				*errs = append(*errs, fmt.Errorf("announce %s: %w", key, err))
				continue
			}
			c.published[key] = *st.export
		}
		ready := 0
		for _, ep := range st.export.Endpoints {
			if ep.Ready {
				ready++
			}
		}
		st.set(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonExported,
			fmt.Sprintf("announced to the clusterset with %d endpoints (%d ready)", len(st.export.Endpoints), ready))
	}
	for key, e := range c.published {
		if st, ok := out[key]; ok && st.export != nil {
			continue
		}
		if err := c.o.Announcer.Withdraw(e.Namespace, e.Name); err != nil {
			*errs = append(*errs, fmt.Errorf("withdraw %s: %w", key, err))
			continue
		}
		delete(c.published, key)
		c.log.Info("export withdrawn", "service", key)
	}
	return out
}

// exportOf builds the announced form of a valid export: the Service's ports, type and
// affinity and this cluster's endpoints from its EndpointSlices.
func (c *Controller) exportOf(se *mcsv1beta1.ServiceExport, svc *corev1.Service) resolve.Export {
	e := resolve.Export{Cluster: c.o.ClusterID, Namespace: se.Namespace, Name: se.Name, Type: resolve.TypeClusterSetIP,
		SessionAffinity: resolve.AffinityNone, ExportedAt: se.CreationTimestamp.UTC()}
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		e.Type = resolve.TypeHeadless
	}
	if p := svc.Spec.InternalTrafficPolicy; p != nil {
		e.InternalTrafficPolicy = string(*p)
	}
	if d := svc.Spec.TrafficDistribution; d != nil {
		e.TrafficDistribution = *d
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		e.SessionAffinity = resolve.AffinityClientIP
		if cfg := svc.Spec.SessionAffinityConfig; cfg != nil && cfg.ClientIP != nil && cfg.ClientIP.TimeoutSeconds != nil {
			e.AffinityTimeout = *cfg.ClientIP.TimeoutSeconds
		}
	}
	if cl, err := ServiceClass(svc.Labels); err != nil {
		c.warnOnce("qos/"+se.Namespace+"/"+se.Name+"/"+svc.Labels[qos.AnnotationClass], "exported Service has an invalid QoS label",
			"service", se.Namespace+"/"+se.Name, "err", err)
	} else {
		e.QoSClass = string(cl)
	}
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name})
	eps, _ := c.slices.EndpointSlices(svc.Namespace).List(sel)
	for _, p := range svc.Spec.Ports {
		proto := cmp.Or(p.Protocol, corev1.ProtocolTCP)
		tp := targetPort(p, proto, eps)
		if tp == p.Port {
			tp = 0 // canonical: 0 means "same as the service port"
		}
		e.Ports = append(e.Ports, resolve.Port{Name: p.Name, Port: p.Port, Protocol: string(proto), TargetPort: tp})
	}
	seen := map[netip.Addr]bool{}
	for _, sl := range eps {
		if sl.Labels[LabelManagedBy] == ManagedByValue {
			continue // never re-export imported endpoints
		}
		for _, ep := range sl.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			for _, a := range ep.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil || seen[addr] {
					continue
				}
				seen[addr] = true
				e.Endpoints = append(e.Endpoints, resolve.Endpoint{Addr: addr, Ready: ready})
			}
		}
	}
	slices.SortFunc(e.Endpoints, func(a, b resolve.Endpoint) int { return a.Addr.Compare(b.Addr) })
	return e
}

// warnOnce logs msg once per key (until the process restarts).
func (c *Controller) warnOnce(key, msg string, args ...any) {
	c.mu.Lock()
	seen := c.warned[key]
	c.warned[key] = true
	c.mu.Unlock()
	if !seen {
		c.log.Warn(msg, args...)
	}
}

// targetPort is the endpoints' port number for service port p: from the Service's
// EndpointSlices (which resolve named target ports), else a numeric targetPort, else 0.
func targetPort(p corev1.ServicePort, proto corev1.Protocol, eps []*discoveryv1.EndpointSlice) int32 {
	for _, sl := range eps {
		if sl.Labels[LabelManagedBy] == ManagedByValue {
			continue
		}
		for _, ep := range sl.Ports {
			if ep.Port != nil && ptrOr(ep.Name, "") == p.Name && ptrOr(ep.Protocol, corev1.ProtocolTCP) == proto {
				return *ep.Port
			}
		}
	}
	if p.TargetPort.Type == intstr.Int {
		return p.TargetPort.IntVal
	}
	return 0
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func (c *Controller) writeExportStatus(ctx context.Context, st *exportState) error {
	if st.se.DeletionTimestamp != nil || equality.Semantic.DeepEqual(st.conds, st.se.Status.Conditions) {
		return nil
	}
	se := st.se.DeepCopy()
	se.Status.Conditions = st.conds
	_, err := c.o.MCS.ServiceExports(se.Namespace).UpdateStatus(ctx, se, metav1.UpdateOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("update status of ServiceExport %s/%s: %w", se.Namespace, se.Name, err)
	}
	return nil
}

// syncImports makes the ServiceImports and imported EndpointSlices match groups.
func (c *Controller) syncImports(ctx context.Context, groups map[string][]resolve.Export, errs *[]error) {
	existing, err := c.imports.List(labels.Everything())
	if err != nil {
		*errs = append(*errs, fmt.Errorf("list ServiceImports: %w", err))
		return
	}
	taken := map[netip.Addr]string{}
	for _, si := range existing {
		for _, ip := range si.Spec.IPs {
			if a, err := netip.ParseAddr(ip); err == nil {
				taken[a] = si.Namespace + "/" + si.Name
			}
		}
	}
	wantSlices := map[string]bool{} // ns/name of every imported EndpointSlice to keep
	for _, key := range slices.Sorted(maps.Keys(groups)) {
		g := groups[key]
		ns := g[0].Namespace
		if _, err := c.namespaces.Get(ns); apierrors.IsNotFound(err) {
			c.mu.Lock()
			if !c.warned[key] {
				c.warned[key] = true
				c.log.Warn("service exported by the clusterset not imported here: its namespace does not exist in this cluster (create the namespace to import it)",
					"service", key, "clusters", clustersOf(g))
			}
			c.mu.Unlock()
			continue
		}
		c.mu.Lock()
		delete(c.warned, key)
		c.mu.Unlock()
		im := resolve.Merge(g)
		si, err := c.ensureImport(ctx, im, taken)
		if err != nil {
			*errs = append(*errs, err)
			continue
		}
		for _, e := range g {
			// A ClusterSetIP import's local endpoints are in the Service's own EndpointSlices
			// (the datapath reads those). A Headless import is answered by DNS (CoreDNS's
			// multicluster zones) from the MCS-labelled slices alone, so this cluster's
			// endpoints get one too, or a local client would only learn remote pods.
			if e.Cluster == c.o.ClusterID && im.Type != resolve.TypeHeadless {
				continue
			}
			for _, sl := range desiredSlices(si, e, im.Ports) {
				wantSlices[sl.Namespace+"/"+sl.Name] = true
				if err := c.ensureSlice(ctx, sl); err != nil {
					*errs = append(*errs, err)
				}
			}
		}
	}
	// Remove what is no longer exported by anyone.
	for _, si := range existing {
		if si.Labels[LabelManagedBy] != ManagedByValue {
			continue
		}
		if _, ok := groups[si.Namespace+"/"+si.Name]; ok {
			continue
		}
		err := c.o.MCS.ServiceImports(si.Namespace).Delete(ctx, si.Name,
			metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &si.UID}})
		if err != nil && !apierrors.IsNotFound(err) {
			*errs = append(*errs, fmt.Errorf("delete ServiceImport %s/%s: %w", si.Namespace, si.Name, err))
			continue
		}
		c.log.Info("ServiceImport removed: no cluster exports the service any more", "service", si.Namespace+"/"+si.Name)
	}
	owned, err := c.slices.List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelManagedBy: EndpointSliceManagedBy}))
	if err != nil {
		*errs = append(*errs, fmt.Errorf("list EndpointSlices: %w", err))
		return
	}
	for _, sl := range owned {
		if wantSlices[sl.Namespace+"/"+sl.Name] {
			continue
		}
		err := c.o.Kube.EndpointSlices(sl.Namespace).Delete(ctx, sl.Name,
			metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &sl.UID}})
		if err != nil && !apierrors.IsNotFound(err) {
			*errs = append(*errs, fmt.Errorf("delete EndpointSlice %s/%s: %w", sl.Namespace, sl.Name, err))
			continue
		}
		c.log.Info("imported EndpointSlice removed", "slice", sl.Namespace+"/"+sl.Name, "cluster", sl.Labels[mcsv1beta1.LabelSourceCluster])
	}
}

func clustersOf(g []resolve.Export) []string {
	var out []string
	for _, e := range g {
		out = append(out, e.Cluster)
	}
	slices.Sort(out)
	return out
}

// ensureImport creates or updates the ServiceImport of im and returns it (with its UID).
func (c *Controller) ensureImport(ctx context.Context, im resolve.Import, taken map[netip.Addr]string) (*mcsv1beta1.ServiceImport, error) {
	key := im.Namespace + "/" + im.Name
	cur, err := c.imports.ServiceImports(im.Namespace).Get(im.Name)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("get ServiceImport %s: %w", key, err)
	}
	if cur != nil && cur.Labels[LabelManagedBy] != ManagedByValue {
		return nil, fmt.Errorf("ServiceImport %s exists and is not managed by patronus (label %s=%s missing): not touching it", key, LabelManagedBy, ManagedByValue)
	}
	spec := mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.ServiceImportType(im.Type),
		SessionAffinity: corev1.ServiceAffinity(im.SessionAffinity)}
	if im.InternalTrafficPolicy != "" {
		itp := corev1.ServiceInternalTrafficPolicy(im.InternalTrafficPolicy)
		spec.InternalTrafficPolicy = &itp
	}
	if im.TrafficDistribution != "" {
		td := im.TrafficDistribution
		spec.TrafficDistribution = &td
	}
	for _, p := range im.Ports {
		spec.Ports = append(spec.Ports, mcsv1beta1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), Port: p.Port})
	}
	if im.SessionAffinity == resolve.AffinityClientIP {
		t := cmp.Or(im.AffinityTimeout, corev1.DefaultClientIPServiceAffinitySeconds)
		spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &t}}
	}
	if im.Type == resolve.TypeClusterSetIP {
		vip, err := c.vipFor(cur, im, taken)
		if err != nil {
			return nil, fmt.Errorf("ClusterSetIP for %s: %w", key, err)
		}
		taken[vip] = key
		spec.IPs = []string{vip.String()}
		// One family per IP, in the same order (the KEP; the conformance suite checks it).
		spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
		if vip.Is6() {
			spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
		}
	}
	var annotations map[string]string
	if im.QoSClass != "" {
		annotations = map[string]string{AnnotationQoSClass: im.QoSClass}
	}
	var clusters []mcsv1beta1.ClusterStatus
	for _, cl := range im.Clusters {
		clusters = append(clusters, mcsv1beta1.ClusterStatus{Cluster: cl})
	}
	api := c.o.MCS.ServiceImports(im.Namespace)
	if cur == nil {
		si := &mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Namespace: im.Namespace, Name: im.Name,
			Labels: map[string]string{LabelManagedBy: ManagedByValue}, Annotations: annotations}, Spec: spec}
		cur, err = api.Create(ctx, si, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("create ServiceImport %s: %w", key, err)
		}
		c.log.Info("ServiceImport created", "service", key, "type", im.Type, "ips", spec.IPs, "clusters", im.Clusters)
	} else if !equality.Semantic.DeepEqual(cur.Spec, spec) || cur.Annotations[AnnotationQoSClass] != im.QoSClass {
		upd := cur.DeepCopy()
		upd.Spec = spec
		if im.QoSClass != "" {
			if upd.Annotations == nil {
				upd.Annotations = map[string]string{}
			}
			upd.Annotations[AnnotationQoSClass] = im.QoSClass
		} else {
			delete(upd.Annotations, AnnotationQoSClass)
		}
		if cur, err = api.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("update ServiceImport %s: %w", key, err)
		}
	}
	conds := slices.Clone(cur.Status.Conditions)
	meta.SetStatusCondition(&conds, metav1.Condition{Type: string(mcsv1beta1.ServiceImportConditionReady), Status: metav1.ConditionTrue,
		Reason: string(mcsv1beta1.ServiceImportReasonReady), ObservedGeneration: cur.Generation,
		Message: fmt.Sprintf("imported from %s", strings.Join(im.Clusters, ", "))})
	if !equality.Semantic.DeepEqual(cur.Status.Clusters, clusters) || !equality.Semantic.DeepEqual(cur.Status.Conditions, conds) {
		upd := cur.DeepCopy()
		upd.Status.Clusters, upd.Status.Conditions = clusters, conds
		if cur, err = api.UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("update status of ServiceImport %s: %w", key, err)
		}
	}
	return cur, nil
}

// vipFor keeps the ClusterSetIP an import already has (if it is in range and not used by
// another import), else allocates one.
func (c *Controller) vipFor(cur *mcsv1beta1.ServiceImport, im resolve.Import, taken map[netip.Addr]string) (netip.Addr, error) {
	key := im.Namespace + "/" + im.Name
	if cur != nil {
		for _, ip := range cur.Spec.IPs {
			if a, err := netip.ParseAddr(ip); err == nil && c.o.ClusterSetIPRange.Contains(a) && cmp.Or(taken[a], key) == key {
				return a, nil
			}
		}
	}
	return resolve.AllocateVIP(c.o.ClusterSetIPRange, im.Namespace, im.Name, func(a netip.Addr) bool {
		owner, ok := taken[a]
		return ok && owner != key
	})
}

// SliceName is the name of the EndpointSlice holding cluster's endpoints of service name
// for one address type: readable, unique, at most 63 characters.
func SliceName(service, cluster string, family discoveryv1.AddressType) string {
	h := sha256.Sum256([]byte(service + "\x00" + cluster + "\x00" + string(family)))
	suffix := "-" + hex.EncodeToString(h[:])[:6]
	base := strings.Trim(strings.ToLower(service+"-"+cluster), "-.")
	base = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '-'
	}, base)
	if len(base) > 63-len(suffix) {
		base = strings.TrimRight(base[:63-len(suffix)], "-.")
	}
	return base + suffix
}

// desiredSlices are the EndpointSlices of cluster e's endpoints for import si: one per
// address family present, with the cluster's ports that are part of the merged import.
func desiredSlices(si *mcsv1beta1.ServiceImport, e resolve.Export, merged []resolve.Port) []*discoveryv1.EndpointSlice {
	var ports []discoveryv1.EndpointPort
	for _, p := range e.Ports {
		p.Protocol = cmp.Or(p.Protocol, "TCP")
		target := cmp.Or(p.TargetPort, p.Port)
		p.TargetPort = 0
		if !slices.Contains(merged, p) {
			continue // lost a port conflict: this cluster does not serve the merged port
		}
		// Like any EndpointSlice, the port is the endpoints' (target) port.
		name, port, proto := p.Name, target, corev1.Protocol(p.Protocol)
		ports = append(ports, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto})
	}
	byFamily := map[discoveryv1.AddressType][]discoveryv1.Endpoint{}
	for _, ep := range e.Endpoints {
		fam := discoveryv1.AddressTypeIPv4
		if ep.Addr.Is6() && !ep.Addr.Is4In6() {
			fam = discoveryv1.AddressTypeIPv6
		}
		ready := ep.Ready
		byFamily[fam] = append(byFamily[fam], discoveryv1.Endpoint{Addresses: []string{ep.Addr.Unmap().String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready}})
	}
	if len(byFamily) == 0 {
		byFamily[discoveryv1.AddressTypeIPv4] = nil // the cluster exports, with no endpoints now
	}
	yes := true
	var out []*discoveryv1.EndpointSlice
	for _, fam := range slices.Sorted(maps.Keys(byFamily)) {
		out = append(out, &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: si.Namespace, Name: SliceName(si.Name, e.Cluster, fam),
				Labels: map[string]string{
					mcsv1beta1.LabelServiceName:   si.Name,
					mcsv1beta1.LabelSourceCluster: e.Cluster,
					discoveryv1.LabelManagedBy:    EndpointSliceManagedBy,
					LabelManagedBy:                ManagedByValue,
				},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: mcsv1beta1.GroupVersion.String(), Kind: "ServiceImport",
					Name: si.Name, UID: si.UID, Controller: &yes}},
			},
			AddressType: fam, Endpoints: byFamily[fam], Ports: ports,
		})
	}
	return out
}

func (c *Controller) ensureSlice(ctx context.Context, want *discoveryv1.EndpointSlice) error {
	api := c.o.Kube.EndpointSlices(want.Namespace)
	cur, err := c.slices.EndpointSlices(want.Namespace).Get(want.Name)
	if apierrors.IsNotFound(err) {
		if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create EndpointSlice %s/%s: %w", want.Namespace, want.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get EndpointSlice %s/%s: %w", want.Namespace, want.Name, err)
	}
	if cur.Labels[discoveryv1.LabelManagedBy] != EndpointSliceManagedBy {
		return fmt.Errorf("EndpointSlice %s/%s exists and is not managed by patronus: not touching it", want.Namespace, want.Name)
	}
	if cur.AddressType != want.AddressType {
		// The address type is immutable: replace the slice.
		if err := api.Delete(ctx, cur.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("replace EndpointSlice %s/%s: %w", want.Namespace, want.Name, err)
		}
		_, err := api.Create(ctx, want, metav1.CreateOptions{})
		return err
	}
	if equality.Semantic.DeepEqual(cur.Labels, want.Labels) && equality.Semantic.DeepEqual(cur.OwnerReferences, want.OwnerReferences) &&
		equality.Semantic.DeepEqual(cur.Endpoints, want.Endpoints) && equality.Semantic.DeepEqual(cur.Ports, want.Ports) {
		return nil
	}
	upd := cur.DeepCopy()
	upd.Labels, upd.OwnerReferences, upd.Endpoints, upd.Ports = want.Labels, want.OwnerReferences, want.Endpoints, want.Ports
	if _, err := api.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update EndpointSlice %s/%s: %w", want.Namespace, want.Name, err)
	}
	return nil
}

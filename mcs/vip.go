package mcs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcslisters "sigs.k8s.io/mcs-api/pkg/client/listers/apis/v1beta1"

	"github.com/patronus/patronus/kube/kclient"
	"github.com/patronus/patronus/mcs/datapath"
	"github.com/patronus/patronus/qos"
)

// Datapath programs the ClusterSetIP translation (*datapath.Programmer satisfies it).
type Datapath interface {
	Set(services []datapath.Service) error
}

// DatapathOptions configures a DatapathSyncer.
type DatapathOptions struct {
	Kube      kclient.Kube
	MCS       kclient.MCS
	ClusterID string
	Datapath  Datapath
	// ClusterHealthy, if set, reports whether a remote cluster is reachable (some path up);
	// the endpoints of an unreachable cluster are left out until it is back. Call
	// DatapathSyncer.Trigger when its answer changes.
	ClusterHealthy func(cluster string) bool
	// Priority maps a ServiceImport's QoS class (annotation patronus.io/qos-class, from the
	// exported Services' labels) to the skb->priority its traffic gets (nil: none).
	Priority func(qos.Class) uint32
	// Resync re-applies the desired state periodically (default 1m); CRDWait as Options.
	Resync  time.Duration
	CRDWait time.Duration
	Logger  *slog.Logger
}

// DatapathSyncer runs on every agent (not only the leader): each node translates the
// ClusterSetIP traffic of its own pods, from the ServiceImports and EndpointSlices the
// leader wrote plus the local Service's own EndpointSlices.
type DatapathSyncer struct {
	o     DatapathOptions
	log   *slog.Logger
	nudge chan struct{}
}

// NewDatapathSyncer validates o.
func NewDatapathSyncer(o DatapathOptions) (*DatapathSyncer, error) {
	if o.Kube == nil || o.MCS == nil || o.Datapath == nil || o.ClusterID == "" {
		return nil, errors.New("mcs: datapath syncer needs Kube, MCS, a Datapath and the cluster id")
	}
	o.Resync = cmp.Or(o.Resync, time.Minute)
	o.CRDWait = cmp.Or(o.CRDWait, 30*time.Second)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &DatapathSyncer{o: o, log: o.Logger.With("component", "mcs-datapath"), nudge: make(chan struct{}, 1)}, nil
}

// Trigger asks for a re-computation (for example when a cluster's paths went down or up).
func (d *DatapathSyncer) Trigger() {
	select {
	case d.nudge <- struct{}{}:
	default:
	}
}

// Run programs the datapath on every change until ctx ends.
func (d *DatapathSyncer) Run(ctx context.Context) error {
	c := &Controller{o: Options{MCS: d.o.MCS, CRDWait: d.o.CRDWait}, log: d.log}
	if err := c.waitForAPI(ctx); err != nil || ctx.Err() != nil {
		return err
	}
	kf := kclient.NewFactory(d.o.Kube, d.o.MCS, kclient.FactoryOptions{})
	trigger := d.Trigger
	h := cache.ResourceEventHandlerFuncs{AddFunc: func(any) { trigger() }, UpdateFunc: func(any, any) { trigger() }, DeleteFunc: func(any) { trigger() }}
	sl, si := kf.EndpointSlices(), kf.ServiceImports()
	slLister, siLister := discoverylisters.NewEndpointSliceLister(sl.GetIndexer()), mcslisters.NewServiceImportLister(si.GetIndexer())
	for _, inf := range []cache.SharedIndexInformer{sl, si} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("mcs datapath: informer handler: %w", err)
		}
	}
	kf.Start(ctx.Done())
	defer kf.Shutdown()
	kf.WaitForCacheSync(ctx.Done())
	resync := time.NewTicker(d.o.Resync)
	defer resync.Stop()
	var lastErr string
	trigger()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-resync.C:
		case <-d.nudge:
		}
		imports, err1 := siLister.List(labels.Everything())
		eps, err2 := slLister.List(labels.Everything())
		err := errors.Join(err1, err2)
		if err == nil {
			err = d.o.Datapath.Set(WithPriorities(BuildServices(d.o.ClusterID, imports, eps, d.o.ClusterHealthy), imports, d.o.Priority))
		}
		if err != nil {
			if err.Error() != lastErr {
				d.log.Warn("ClusterSetIP datapath not programmed; retrying", "err", err)
			}
			lastErr = err.Error()
			time.AfterFunc(time.Second, trigger)
			continue
		}
		lastErr = ""
	}
}

// WithPriorities sets each service's Priority from its ServiceImport's QoS class
// annotation through prio (nil: services unchanged). An invalid class gives none.
func WithPriorities(svcs []datapath.Service, imports []*mcsv1beta1.ServiceImport, prio func(qos.Class) uint32) []datapath.Service {
	if prio == nil {
		return svcs
	}
	classes := map[string]qos.Class{}
	for _, im := range imports {
		if c, err := qos.ParseClass(im.Annotations[AnnotationQoSClass]); err == nil {
			classes[im.Namespace+"/"+im.Name] = c
		}
	}
	for i := range svcs {
		if c, ok := classes[svcs[i].Name]; ok {
			svcs[i].Priority = prio(c)
		}
	}
	return svcs
}

// BuildServices computes the datapath's services: one per ServiceImport of type
// ClusterSetIP with an IPv4 ClusterSetIP, its ports' endpoints taken from the imported
// EndpointSlices (remote clusters) and, when this cluster exports the service too, from
// the local Service's EndpointSlices (marked Local). Endpoint ports come from the slice
// port of the same name and protocol. Remote clusters for which healthy (if not nil)
// returns false contribute no endpoints. Sorted by name.
func BuildServices(clusterID string, imports []*mcsv1beta1.ServiceImport, eps []*discoveryv1.EndpointSlice, healthy func(cluster string) bool) []datapath.Service {
	var out []datapath.Service
	for _, im := range imports {
		if im.Spec.Type != mcsv1beta1.ClusterSetIP || len(im.Spec.IPs) == 0 {
			continue
		}
		vip, err := netip.ParseAddr(im.Spec.IPs[0])
		if err != nil || !vip.Is4() {
			continue
		}
		localExports := slices.ContainsFunc(im.Status.Clusters, func(c mcsv1beta1.ClusterStatus) bool { return c.Cluster == clusterID })
		type src struct {
			sl    *discoveryv1.EndpointSlice
			local bool
		}
		var srcs []src
		for _, sl := range eps {
			if sl.Namespace != im.Namespace || sl.AddressType != discoveryv1.AddressTypeIPv4 {
				continue
			}
			switch {
			case sl.Labels[discoveryv1.LabelManagedBy] == EndpointSliceManagedBy && sl.Labels[mcsv1beta1.LabelServiceName] == im.Name &&
				sl.Labels[mcsv1beta1.LabelSourceCluster] != clusterID:
				if healthy != nil && !healthy(sl.Labels[mcsv1beta1.LabelSourceCluster]) {
					continue
				}
				srcs = append(srcs, src{sl, false})
			case localExports && sl.Labels[discoveryv1.LabelServiceName] == im.Name && sl.Labels[discoveryv1.LabelManagedBy] != EndpointSliceManagedBy:
				srcs = append(srcs, src{sl, true})
			}
		}
		svc := datapath.Service{Name: im.Namespace + "/" + im.Name, VIP: vip}
		if im.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
			t := corev1.DefaultClientIPServiceAffinitySeconds
			if c := im.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
				t = *c.ClientIP.TimeoutSeconds
			}
			svc.AffinityTimeout = time.Duration(t) * time.Second
		}
		for _, p := range im.Spec.Ports {
			proto := cmp.Or(p.Protocol, corev1.ProtocolTCP)
			dp := datapath.Port{Protocol: string(proto), Port: uint16(p.Port)}
			for _, s := range srcs {
				var port int32
				for _, sp := range s.sl.Ports {
					if sp.Port != nil && ptrOr(sp.Name, "") == p.Name && ptrOr(sp.Protocol, corev1.ProtocolTCP) == proto {
						port = *sp.Port
					}
				}
				if port == 0 {
					continue // this slice's cluster does not serve the port
				}
				for _, ep := range s.sl.Endpoints {
					ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
					for _, a := range ep.Addresses {
						if addr, err := netip.ParseAddr(a); err == nil {
							dp.Endpoints = append(dp.Endpoints, datapath.Endpoint{Addr: addr, Port: uint16(port), Ready: ready, Local: s.local})
						}
					}
				}
			}
			slices.SortFunc(dp.Endpoints, func(a, b datapath.Endpoint) int {
				return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
			})
			svc.Ports = append(svc.Ports, dp)
		}
		out = append(out, svc)
	}
	slices.SortFunc(out, func(a, b datapath.Service) int { return strings.Compare(a.Name, b.Name) })
	return out
}

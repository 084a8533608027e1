// Package kclient is the agent's Kubernetes API client: a REST client per group-version
// over a private scheme holding only the kinds the agent uses, typed resource clients with
// client-go's method signatures, and shared informers over them (factory.go).
//
// It replaces client-go's generated clientset, informer factories and discovery client.
// Those register every API group of Kubernetes (and apply configurations, OpenAPI models)
// in package init, and this binary is also the CNI plugin: every pod start paid for them
// (BENCHMARKS.md, "Why the binary's init costs"). Everything here is built by New, at
// agent start, never at init.
//
// The interfaces (Kube, MCS, Resource) are what the agent's packages take, so tests can
// pass client-go's fake clientsets through package kclient/fake instead of a server.
package kclient

import (
	"context"
	"encoding/json"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

// Resource is one resource type in one namespace (or cluster-wide): the subset of
// client-go's typed client methods the agent uses, with the same signatures, so a typed
// client of client-go (such as a fake clientset's) satisfies it too.
type Resource[T, L runtime.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
}

// StatusResource is a Resource with a status subresource.
type StatusResource[T, L runtime.Object] interface {
	Resource[T, L]
	UpdateStatus(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

// Kube is the built-in API groups the agent uses. An empty namespace means all
// namespaces (list and watch) as with client-go.
type Kube interface {
	Pods(namespace string) Resource[*corev1.Pod, *corev1.PodList]
	Nodes() Resource[*corev1.Node, *corev1.NodeList]
	Namespaces() Resource[*corev1.Namespace, *corev1.NamespaceList]
	Services(namespace string) Resource[*corev1.Service, *corev1.ServiceList]
	ConfigMaps(namespace string) Resource[*corev1.ConfigMap, *corev1.ConfigMapList]
	Secrets(namespace string) Resource[*corev1.Secret, *corev1.SecretList]
	Events(namespace string) Resource[*corev1.Event, *corev1.EventList]
	NetworkPolicies(namespace string) Resource[*networkingv1.NetworkPolicy, *networkingv1.NetworkPolicyList]
	EndpointSlices(namespace string) Resource[*discoveryv1.EndpointSlice, *discoveryv1.EndpointSliceList]
	Leases(namespace string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
}

// MCS is the Multi-Cluster Services API (sigs.k8s.io/mcs-api v1beta1, a CRD that may be
// absent).
type MCS interface {
	ServiceExports(namespace string) StatusResource[*mcsv1beta1.ServiceExport, *mcsv1beta1.ServiceExportList]
	ServiceImports(namespace string) StatusResource[*mcsv1beta1.ServiceImport, *mcsv1beta1.ServiceImportList]
	// ServerResourcesForGroupVersion is discovery of one group-version (as client-go's
	// discovery client): a NotFound error when the API server does not serve it.
	ServerResourcesForGroupVersion(groupVersion string) (*metav1.APIResourceList, error)
}

// Client implements Kube and MCS against an API server. The built-in groups are spoken in
// protobuf, as client-go's typed clients do (smaller and cheaper to decode than JSON); the
// MCS CRDs in JSON, the only encoding CRDs have.
type Client struct {
	core, networking, discovery, coordination, mcs *rest.RESTClient
}

var (
	_ Kube = (*Client)(nil)
	_ MCS  = (*Client)(nil)
)

// newScheme holds the kinds the agent reads and writes, and the meta kinds every group
// carries (Status, WatchEvent, options).
func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, networkingv1.AddToScheme, discoveryv1.AddToScheme, coordinationv1.AddToScheme,
		mcsv1beta1.AddToScheme,
	} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	return s, nil
}

// New builds a Client from cfg. One HTTP client (connection pool) and one token bucket
// (cfg.QPS, cfg.Burst) are shared by every group, as in client-go's clientset.
func New(cfg *rest.Config) (*Client, error) {
	s, err := newScheme()
	if err != nil {
		return nil, fmt.Errorf("kubernetes client scheme: %w", err)
	}
	codecs := serializer.NewCodecFactory(s)
	base := rest.CopyConfig(cfg)
	if base.UserAgent == "" {
		base.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	if base.RateLimiter == nil && base.QPS > 0 {
		if base.Burst <= 0 {
			return nil, fmt.Errorf("kubernetes client: burst must be positive when QPS is set")
		}
		base.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(base.QPS, base.Burst)
	}
	hc, err := rest.HTTPClientFor(base)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	mk := func(gv schema.GroupVersion, builtin bool) (*rest.RESTClient, error) {
		c := rest.CopyConfig(base)
		c.GroupVersion = &gv
		c.APIPath = "/apis"
		if gv.Group == "" {
			c.APIPath = "/api"
		}
		c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(s, codecs).WithoutConversion()
		if builtin && c.ContentType == "" {
			c.ContentType = runtime.ContentTypeProtobuf
			c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
		}
		rc, err := rest.RESTClientForConfigAndClient(c, hc)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
		}
		return rc, nil
	}
	out := &Client{}
	for _, g := range []struct {
		dst     **rest.RESTClient
		gv      schema.GroupVersion
		builtin bool
	}{
		{&out.core, corev1.SchemeGroupVersion, true},
		{&out.networking, networkingv1.SchemeGroupVersion, true},
		{&out.discovery, discoveryv1.SchemeGroupVersion, true},
		{&out.coordination, coordinationv1.SchemeGroupVersion, true},
		{&out.mcs, mcsv1beta1.SchemeGroupVersion, false},
	} {
		if *g.dst, err = mk(g.gv, g.builtin); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (c *Client) Pods(ns string) Resource[*corev1.Pod, *corev1.PodList] {
	return newResource[corev1.Pod, corev1.PodList](c.core, ns, "pods")
}

func (c *Client) Nodes() Resource[*corev1.Node, *corev1.NodeList] {
	return newResource[corev1.Node, corev1.NodeList](c.core, "", "nodes")
}

func (c *Client) Namespaces() Resource[*corev1.Namespace, *corev1.NamespaceList] {
	return newResource[corev1.Namespace, corev1.NamespaceList](c.core, "", "namespaces")
}

func (c *Client) Services(ns string) Resource[*corev1.Service, *corev1.ServiceList] {
	return newResource[corev1.Service, corev1.ServiceList](c.core, ns, "services")
}

func (c *Client) ConfigMaps(ns string) Resource[*corev1.ConfigMap, *corev1.ConfigMapList] {
	return newResource[corev1.ConfigMap, corev1.ConfigMapList](c.core, ns, "configmaps")
}

func (c *Client) Secrets(ns string) Resource[*corev1.Secret, *corev1.SecretList] {
	return newResource[corev1.Secret, corev1.SecretList](c.core, ns, "secrets")
}

func (c *Client) Events(ns string) Resource[*corev1.Event, *corev1.EventList] {
	return newResource[corev1.Event, corev1.EventList](c.core, ns, "events")
}

func (c *Client) NetworkPolicies(ns string) Resource[*networkingv1.NetworkPolicy, *networkingv1.NetworkPolicyList] {
	return newResource[networkingv1.NetworkPolicy, networkingv1.NetworkPolicyList](c.networking, ns, "networkpolicies")
}

func (c *Client) EndpointSlices(ns string) Resource[*discoveryv1.EndpointSlice, *discoveryv1.EndpointSliceList] {
	return newResource[discoveryv1.EndpointSlice, discoveryv1.EndpointSliceList](c.discovery, ns, "endpointslices")
}

func (c *Client) Leases(ns string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return newResource[coordinationv1.Lease, coordinationv1.LeaseList](c.coordination, ns, "leases")
}

func (c *Client) ServiceExports(ns string) StatusResource[*mcsv1beta1.ServiceExport, *mcsv1beta1.ServiceExportList] {
	return newResource[mcsv1beta1.ServiceExport, mcsv1beta1.ServiceExportList](c.mcs, ns, "serviceexports")
}

func (c *Client) ServiceImports(ns string) StatusResource[*mcsv1beta1.ServiceImport, *mcsv1beta1.ServiceImportList] {
	return newResource[mcsv1beta1.ServiceImport, mcsv1beta1.ServiceImportList](c.mcs, ns, "serviceimports")
}

// ServerResourcesForGroupVersion implements MCS: GET /apis/<group>/<version> (or
// /api/v1), as client-go's discovery does.
func (c *Client) ServerResourcesForGroupVersion(groupVersion string) (*metav1.APIResourceList, error) {
	gv, err := schema.ParseGroupVersion(groupVersion)
	if err != nil {
		return nil, err
	}
	path := "/apis/" + gv.Group + "/" + gv.Version
	if gv.Group == "" {
		path = "/api/" + gv.Version
	}
	ctx, cancel := context.WithTimeout(context.Background(), discoveryTimeout)
	defer cancel()
	// The core client: any of them reaches any path; AbsPath ignores its group prefix.
	raw, err := c.core.Get().AbsPath(path).SetHeader("Accept", runtime.ContentTypeJSON).Do(ctx).Raw()
	if err != nil {
		return nil, err
	}
	out := &metav1.APIResourceList{}
	if err := json.Unmarshal(raw, out); err != nil {
		return nil, fmt.Errorf("discovery %s: %w", path, err)
	}
	if out.GroupVersion == "" {
		out.GroupVersion = groupVersion
	}
	return out, nil
}

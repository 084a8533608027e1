// Package fake adapts client-go's and mcs-api's fake clientsets to kclient's interfaces,
// for unit tests only: the shipped binary must not link it (main_test.go checks that no
// package ending in /fake is linked).
package fake

import (
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/watchlist"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/patronus/patronus/kube/kclient"
)

// Kube wraps a clientset (typically k8s.io/client-go/kubernetes/fake's).
func Kube(cs kubernetes.Interface) kclient.Kube { return kube{cs} }

// MCS wraps an MCS clientset (typically sigs.k8s.io/mcs-api's fake).
func MCS(cs mcsclient.Interface) kclient.MCS { return mcs{cs} }

type kube struct{ cs kubernetes.Interface }

// IsWatchListSemanticsUnSupported forwards the fake clientset's answer (true): the
// reflector lists and watches.
func (k kube) IsWatchListSemanticsUnSupported() bool {
	return watchlist.DoesClientNotSupportWatchListSemantics(k.cs)
}

func (k kube) Pods(ns string) kclient.Resource[*corev1.Pod, *corev1.PodList] {
	return k.cs.CoreV1().Pods(ns)
}
func (k kube) Nodes() kclient.Resource[*corev1.Node, *corev1.NodeList] { return k.cs.CoreV1().Nodes() }
func (k kube) Namespaces() kclient.Resource[*corev1.Namespace, *corev1.NamespaceList] {
	return k.cs.CoreV1().Namespaces()
}
func (k kube) Services(ns string) kclient.Resource[*corev1.Service, *corev1.ServiceList] {
	return k.cs.CoreV1().Services(ns)
}
func (k kube) ConfigMaps(ns string) kclient.Resource[*corev1.ConfigMap, *corev1.ConfigMapList] {
	return k.cs.CoreV1().ConfigMaps(ns)
}
func (k kube) Secrets(ns string) kclient.Resource[*corev1.Secret, *corev1.SecretList] {
	return k.cs.CoreV1().Secrets(ns)
}
func (k kube) Events(ns string) kclient.Resource[*corev1.Event, *corev1.EventList] {
	return k.cs.CoreV1().Events(ns)
}
func (k kube) NetworkPolicies(ns string) kclient.Resource[*networkingv1.NetworkPolicy, *networkingv1.NetworkPolicyList] {
	return k.cs.NetworkingV1().NetworkPolicies(ns)
}
func (k kube) EndpointSlices(ns string) kclient.Resource[*discoveryv1.EndpointSlice, *discoveryv1.EndpointSliceList] {
	return k.cs.DiscoveryV1().EndpointSlices(ns)
}
func (k kube) Leases(ns string) kclient.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return k.cs.CoordinationV1().Leases(ns)
}

type mcs struct{ cs mcsclient.Interface }

func (m mcs) IsWatchListSemanticsUnSupported() bool {
	return watchlist.DoesClientNotSupportWatchListSemantics(m.cs)
}

func (m mcs) ServiceExports(ns string) kclient.StatusResource[*mcsv1beta1.ServiceExport, *mcsv1beta1.ServiceExportList] {
	return m.cs.MulticlusterV1beta1().ServiceExports(ns)
}
func (m mcs) ServiceImports(ns string) kclient.StatusResource[*mcsv1beta1.ServiceImport, *mcsv1beta1.ServiceImportList] {
	return m.cs.MulticlusterV1beta1().ServiceImports(ns)
}
func (m mcs) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	return m.cs.Discovery().ServerResourcesForGroupVersion(gv)
}

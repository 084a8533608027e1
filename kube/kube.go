// Package kube holds the agent's Kubernetes plumbing: client construction (kubeconfig or
// in-cluster), MCS API discovery, the Event recorder, and a small level-based controller
// (shared informer events -> rate-limited workqueue -> reconcile by key).
//
// It keeps no package-level state: the same binary is the CNI plugin, so nothing here may
// cost anything at init.
package kube

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
)

// UserAgent identifies the agent in API server logs and audit.
const UserAgent = "patronus-agent"

// RESTConfig loads the kubeconfig at path or, when path is empty, the in-cluster
// configuration (the ServiceAccount token of the DaemonSet pod).
func RESTConfig(path string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig given (--kubeconfig or KUBECONFIG) and not running in a pod: %w", err)
		}
	} else {
		if _, serr := os.Stat(path); serr != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, serr)
		}
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
		}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = UserAgent
	// The agent lists a handful of resource types at start and then only watches; the
	// defaults (5 QPS) make a restart after an API server outage needlessly slow.
	if cfg.QPS == 0 {
		cfg.QPS = 20
		cfg.Burst = 40
	}
	return cfg, nil
}

// Clients are the typed clients the agent uses.
type Clients struct {
	Kube kubernetes.Interface
	MCS  mcsclient.Interface
}

// NewClients builds the clients from cfg.
func NewClients(cfg *rest.Config) (*Clients, error) {
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	m, err := mcsclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("MCS API client: %w", err)
	}
	return &Clients{Kube: k, MCS: m}, nil
}

// MCSGroupVersion is the MCS API version the agent watches: v1beta1 is the storage version
// of the CRDs shipped with sigs.k8s.io/mcs-api v0.5.2 (v1alpha1 is still served).
const MCSGroupVersion = "multicluster.x-k8s.io/v1beta1"

// MCSAvailable reports whether the API server serves ServiceExport and ServiceImport at
// MCSGroupVersion. A missing group is (false, nil); other errors are returned.
func MCSAvailable(k kubernetes.Interface) (bool, error) {
	rl, err := k.Discovery().ServerResourcesForGroupVersion(MCSGroupVersion)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover %s: %w", MCSGroupVersion, err)
	}
	var exports, imports bool
	for _, r := range rl.APIResources {
		switch r.Name {
		case "serviceexports":
			exports = true
		case "serviceimports":
			imports = true
		}
	}
	return exports && imports, nil
}

// Recorder emits Kubernetes Events. Stop flushes nothing: events are best effort.
type Recorder struct {
	record.EventRecorder
	broadcaster record.EventBroadcaster
}

// NewRecorder starts an Event broadcaster writing through k and returns a recorder whose
// events name component and host as their source. Call Stop on shutdown.
func NewRecorder(ctx context.Context, k kubernetes.Interface, component, host string, logger *slog.Logger) *Recorder {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: k.CoreV1().Events("")})
	if logger != nil {
		b.StartEventWatcher(func(e *corev1.Event) {
			logger.Debug("event", "object", e.InvolvedObject.Namespace+"/"+e.InvolvedObject.Name,
				"type", e.Type, "reason", e.Reason, "message", e.Message)
		})
	}
	// scheme.Scheme is client-go's own scheme (built by client-go itself); the recorder
	// uses it only to find the kind of typed objects.
	r := b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component, Host: host})
	return &Recorder{EventRecorder: r, broadcaster: b}
}

// Stop shuts the broadcaster down.
func (r *Recorder) Stop() { r.broadcaster.Shutdown() }

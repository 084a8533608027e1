// Package kube holds the agent's Kubernetes plumbing: client construction (kubeconfig or
// in-cluster; the clients themselves are package kclient), MCS API discovery, the Event
// recorder, Lease leader election, and a small level-based controller (shared informer
// events -> rate-limited workqueue -> reconcile by key).
//
// It keeps no package-level state: the same binary is the CNI plugin, so nothing here may
// cost anything at init.
package kube

import (
	"fmt"
	"os"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/patronus/patronus/kube/kclient"
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

// Clients are the API clients the agent uses: Kube for the built-in groups, MCS for the
// Multi-Cluster Services CRDs (both a *kclient.Client in production).
type Clients struct {
	Kube kclient.Kube
	MCS  kclient.MCS
}

// NewClients builds the clients from cfg.
func NewClients(cfg *rest.Config) (*Clients, error) {
	c, err := kclient.New(cfg)
	if err != nil {
		return nil, err
	}
	return &Clients{Kube: c, MCS: c}, nil
}

// MCSGroupVersion is the MCS API version the agent watches: v1beta1 is the storage version
// of the CRDs shipped with sigs.k8s.io/mcs-api v0.5.2 (v1alpha1 is still served).
const MCSGroupVersion = "multicluster.x-k8s.io/v1beta1"

// MCSAvailable reports whether the API server serves ServiceExport and ServiceImport at
// MCSGroupVersion. A missing group is (false, nil); other errors are returned.
func MCSAvailable(m kclient.MCS) (bool, error) {
	rl, err := m.ServerResourcesForGroupVersion(MCSGroupVersion)
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

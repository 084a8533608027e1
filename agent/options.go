// Package agent is `patronus agent`, the node daemon (the seed's "SD-WAN CNI Daemon").
//
// It watches the Kubernetes API (pods on its node, namespaces, NetworkPolicies, Services,
// EndpointSlices and the MCS API's ServiceExport/ServiceImport) through shared informers
// and rate-limited workqueues, matches every pod the CNI plugin registered in the node
// database with its API object, and serves a local API on a unix socket and metrics on
// TCP. All state is rebuilt on start from the API and the database: a restart never
// touches working pods.
package agent

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/store"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"
)

// Defaults of Options.
const (
	DefaultMetricsAddr       = ":9476"
	DefaultResyncPeriod      = 5 * time.Minute
	DefaultStorePollInterval = time.Second
	DefaultMCSRetryInterval  = 30 * time.Second
	DefaultWorkers           = 2
)

// Handler is an extra handler mounted on the local API (for example the mesh's
// /v1/members and /v1/events). Pattern is an http.ServeMux pattern.
type Handler struct {
	Pattern string
	Handler http.Handler
}

// Options configure Run. Zero values take the defaults noted.
type Options struct {
	// Kubeconfig is a kubeconfig path; empty means in-cluster (ServiceAccount token).
	Kubeconfig string
	// RESTConfig, if set, is used instead of Kubeconfig (tests).
	RESTConfig *rest.Config

	// NodeName is this node (NODE_NAME). Required.
	NodeName string
	// ClusterID is the CLUSTER_ID tier of the cluster id (may be empty when the ConfigMap
	// or the conflist gives it).
	ClusterID string
	// ConfigNamespace holds the patronus-config ConfigMap (default kube-system).
	ConfigNamespace string
	// ConflistPath is the CNI conflist to read sdwan.* and the bridge from (default
	// /etc/cni/net.d/10-patronus.conflist; a missing file is fine).
	ConflistPath string

	// DatabasePath is the node database (default /var/lib/patronus/k8s-sdwan.db).
	DatabasePath string
	// SocketPath is the local API socket (default /var/run/patronus/agent.sock).
	SocketPath string
	// MetricsAddr is the metrics and health address (default ":9476"; "127.0.0.1:0" in
	// tests: the chosen address is in /v1/status). "off" disables it.
	MetricsAddr string

	// ResyncPeriod is the informers' periodic resync (default 5m).
	ResyncPeriod time.Duration
	// StorePollInterval is how often the database is scanned for pods the CNI plugin
	// added or removed (default 1s).
	StorePollInterval time.Duration
	// MCSRetryInterval is how often the MCS API is looked for while it is absent
	// (default 30s).
	MCSRetryInterval time.Duration
	// Workers per controller (default 2).
	Workers int

	// Logger (default: discard).
	Logger *slog.Logger
	// Registry receives the agent's metrics and is served on /metrics (default: a new one).
	Registry *prometheus.Registry
	// APIHandlers are mounted on the local API mux in addition to the agent's own.
	APIHandlers []Handler
	// Version is reported in /v1/status.
	Version string
	// Policy turns NetworkPolicy enforcement on (nil: off; the CLI sets it unless
	// --enforce-policy=false). See agent/policy.go.
	Policy *PolicyOptions
	// Mesh runs the gateway mesh node (nil: off; the CLI sets it unless --mesh=false).
	// See agent/mesh.go.
	Mesh *MeshOptions
	// Tunnel runs the WireGuard tunnel dataplane on gateway nodes whose mesh runs (nil:
	// off; the CLI sets it unless --tunnel=false). See agent/tunnel.go.
	Tunnel *TunnelOptions
	// Paths runs path monitoring to the remote clusters (nil: off). See agent/paths.go.
	Paths *PathsOptions
	// NodeNet runs per-node pod networking and owns the CNI conflist (nil: off; the CLI
	// sets it unless --manage-conflist=false). See agent/nodenet.go.
	NodeNet *NodeNetOptions
	// MCS runs Multi-Cluster Services (nil: off; the CLI sets it unless --mcs=false). See
	// agent/mcs.go.
	MCS *MCSOptions
}

func (o Options) withDefaults() Options {
	if o.ConfigNamespace == "" {
		o.ConfigNamespace = config.ConfigMapNamespace
	}
	if o.ConflistPath == "" {
		o.ConflistPath = config.DefaultConflistPath
	}
	if o.DatabasePath == "" {
		o.DatabasePath = store.DefaultPath
	}
	if o.SocketPath == "" {
		o.SocketPath = localapi.DefaultSocket
	}
	if o.MetricsAddr == "" {
		o.MetricsAddr = DefaultMetricsAddr
	}
	if o.ResyncPeriod <= 0 {
		o.ResyncPeriod = DefaultResyncPeriod
	}
	if o.StorePollInterval <= 0 {
		o.StorePollInterval = DefaultStorePollInterval
	}
	if o.MCSRetryInterval <= 0 {
		o.MCSRetryInterval = DefaultMCSRetryInterval
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	return o
}

func (o Options) validate() error {
	if o.NodeName == "" {
		return errors.New("agent: node name not set: set NODE_NAME (from spec.nodeName in the DaemonSet) or pass --node-name")
	}
	if o.MetricsAddr != "off" {
		if _, _, err := net.SplitHostPort(o.MetricsAddr); err != nil {
			return errors.New("agent: --metrics-addr " + o.MetricsAddr + " is not host:port (use :9476, 127.0.0.1:0 or off)")
		}
	}
	return nil
}

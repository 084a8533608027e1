package agent

import (
	"context"
	"encoding/json"
	"fmt"

	"net/http"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/qos"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// apiMux is the local API (unix socket). Extra handlers come from Options.APIHandlers; a
// pattern that conflicts with another is an error, not a panic.
func (a *agent) apiMux() (mux *http.ServeMux, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("agent: local API handlers: %v", r)
		}
	}()
	mux = http.NewServeMux()
	mux.HandleFunc("GET "+localapi.PathHealthz, a.healthz)
	mux.HandleFunc("GET "+localapi.PathReadyz, a.readyz)
	mux.HandleFunc("GET "+localapi.PathStatus, a.handleStatus)
	mux.HandleFunc("GET "+localapi.PathPods, a.handlePods)
	mux.HandleFunc("POST "+localapi.PathEndpointSync, a.handleEndpointSync)
	mux.HandleFunc("POST "+localapi.PathEndpointRemove, a.handleEndpointRemove)
	for _, h := range append(append(append(a.meshHandlers(), a.pathsHandlers()...), a.nodeNetHandlers()...), a.tunnelHandlers()...) {
		mux.Handle(h.Pattern, h.Handler)
	}
	for _, h := range a.opts.APIHandlers {
		mux.Handle(h.Pattern, h.Handler)
	}
	return mux, nil
}

// metricsMux is the TCP listener: Prometheus metrics and the kubelet probes.
func (a *agent) metricsMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.opts.Registry, promhttp.HandlerOpts{Registry: a.opts.Registry}))
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /readyz", a.readyz)
	return mux
}

func (a *agent) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// readyz is 200 once the caches have synced, and stays 200 during a later API server
// outage: the agent keeps serving from its caches, and the CNI plugin's STATUS (which asks
// this) must not take the node's pod networking down because the control plane blinked.
func (a *agent) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !a.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s\n", a.notReady.Load())
		return
	}
	// The node takes no pods before its conflist exists (nodenet.go).
	if reason := a.nodeNetNotReady(); reason != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s\n", reason)
		return
	}
	fmt.Fprintln(w, "ok")
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (a *agent) handlePods(w http.ResponseWriter, r *http.Request) {
	pods, err := a.listPods(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, localapi.PodList{Items: pods})
}

func (a *agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	s, err := a.status(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, s)
}

// listPods reads the database: it is the truth for what is attached on this node, and the
// agent's reconcile has written the API side into it.
func (a *agent) listPods(ctx context.Context) ([]localapi.Pod, error) {
	rows, err := a.db.ListPods(ctx)
	if err != nil {
		return nil, err
	}
	def := qos.DefaultClass
	if cfg := a.config(); cfg != nil {
		def = cfg.DefaultQoSClass
	}
	out := make([]localapi.Pod, 0, len(rows))
	for _, r := range rows {
		out = append(out, localapi.PodFromStore(r, def))
	}
	return out, nil
}

func (a *agent) status(ctx context.Context) (localapi.Status, error) {
	s := localapi.Status{
		Node: a.opts.NodeName, Version: a.opts.Version, StartedAt: a.started, Ready: a.ready.Load(),
		Database: a.opts.DatabasePath, Tunnels: []localapi.Tunnel{}, MetricsAddr: a.metricsAt.Load().(string),
		NetworkPolicies: a.seen[kindNetworkPolicies].len(), Namespaces: a.seen[kindNamespaces].len(),
		Services: a.seen[kindServices].len(), EndpointSlices: a.seen[kindEndpointSlices].len(),
		MCS: localapi.MCS{Available: a.mcsUp.Load(), ServiceExports: a.seen[kindServiceExports].len(),
			ServiceImports: a.seen[kindServiceImports].len()},
	}
	if !s.Ready {
		s.NotReadyReason = a.notReady.Load().(string)
	}
	if r := a.nodeNetNotReady(); s.Ready && r != "" {
		s.Ready, s.NotReadyReason = false, r
	}
	s.ConfigWarning, _ = a.configWarning.Load().(string)
	bridge := ""
	if cfg := a.config(); cfg != nil {
		s.ClusterID = cfg.ClusterID
		bridge = cfg.Bridge
	}
	s.Bridge = localapi.BridgeStatus(bridge)
	s.Mesh = a.meshStatus(ctx)
	a.mcs.localStatus(&s.MCS)
	s.Tunnels = a.tunnelsStatus()
	pods, err := a.listPods(ctx)
	if err != nil {
		return s, err
	}
	s.Pods, s.PodsManaged = pods, len(pods)
	return s, nil
}

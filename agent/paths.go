package agent

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/probe"
)

// PathsOptions turn path monitoring on (Options.Paths; nil: off). It runs only when the
// configuration lists remote clusters with endpoints: those are the paths it probes.
type PathsOptions struct {
	// ResponderAddr is where this node answers probes ("" = ":7948", "off" = none).
	ResponderAddr string
	// MetricsSocket is the L7 metrics socket ("" = /var/run/patronus/metrics.sock,
	// "off" = none).
	MetricsSocket string
	// Port is the remote responders' port (0 = 7948).
	Port int
}

// pathsHandler serves GET /v1/paths from the running service, 503 until it runs.
type pathsHandler struct {
	svc *atomic.Pointer[probe.Service]
}

func (h pathsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := h.svc.Load()
	if s == nil {
		http.Error(w, "path monitoring is not running on this agent (no remote clusters with endpoints, or turned off)",
			http.StatusServiceUnavailable)
		return
	}
	s.Handler().ServeHTTP(w, r)
}

func (a *agent) pathsHandlers() []Handler {
	if a.opts.Paths == nil {
		return nil
	}
	return []Handler{{Pattern: probe.PathsAPIPath, Handler: pathsHandler{svc: &a.pathsSvc}}}
}

// startPaths probes every path to the configured remote clusters, in wg until ctx ends.
// Like the mesh, a failure is logged, not fatal.
func (a *agent) startPaths(ctx context.Context, cfg *config.Config, wg *sync.WaitGroup) {
	o := a.opts.Paths
	if o == nil {
		return
	}
	ps, err := probe.PathsFromConfig(cfg.RemoteClusters, o.Port)
	if err != nil {
		a.log.Error("path monitoring not started", "err", err)
		return
	}
	if len(ps) == 0 {
		a.log.Info("path monitoring idle: no remote clusters with endpoints")
		return
	}
	reg := &trackingRegisterer{r: a.opts.Registry}
	svc, err := probe.NewService(probe.ServiceOptions{
		Prober: probe.Options{Paths: ps, Config: paths.Config{Interval: cfg.ProbeInterval},
			LocalCluster: cfg.ClusterID, Registerer: reg, Logger: a.log.With("component", "paths")},
		ResponderAddr: o.ResponderAddr, MetricsSocket: o.MetricsSocket, Logger: a.log.With("component", "paths"),
	})
	if err != nil {
		reg.unregisterAll()
		a.log.Error("path monitoring not started", "err", err)
		return
	}
	a.pathsSvc.Store(svc)
	a.log.Info("path monitoring running", "paths", len(ps), "interval", cfg.ProbeInterval)
	wg.Go(func() {
		defer reg.unregisterAll()
		if err := svc.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("path monitoring stopped", "err", err)
		}
		a.pathsSvc.Store(nil)
	})
}

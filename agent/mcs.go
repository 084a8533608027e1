package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mcs"
	"github.com/patronus/patronus/mcs/datapath"
	"github.com/patronus/patronus/paths"
)

// MCSOptions turn Multi-Cluster Services on (Options.MCS; nil: off; the CLI sets it unless
// --mcs=false). Two parts run once the MCS CRDs are found (runMCS detects them):
//   - on every agent, the ClusterSetIP datapath (package mcs/datapath: nftables DNAT of
//     the VIPs of the ServiceImports to the exporting clusters' endpoints);
//   - on gateway agents (those running the mesh node), the controller (package mcs): a
//     Lease picks one per cluster, which announces the cluster's ServiceExports through
//     the mesh and writes the ServiceImports and remote EndpointSlices.
type MCSOptions struct {
	// NetNSPath is the namespace whose nftables get the ClusterSetIP translation ("" =
	// the agent's own, the host's in the DaemonSet; tests give a node namespace).
	NetNSPath string
	// NoDatapath runs the controller only (no VIP translation on this node).
	NoDatapath bool
}

// mcsState is what /v1/status shows of the MCS controller.
type mcsState struct {
	ctrl   atomic.Pointer[mcs.Controller]
	ds     atomic.Pointer[mcs.DatapathSyncer] // the ClusterSetIP datapath (nil: not running)
	status atomic.Value                       // string: what runs, or why not
}

func (s *mcsState) set(format string, args ...any) { s.status.Store(fmt.Sprintf(format, args...)) }

// localStatus fills the controller part of the local API's MCS status.
func (s *mcsState) localStatus(m *localapi.MCS) {
	m.Controller, _ = s.status.Load().(string)
	if c := s.ctrl.Load(); c != nil {
		m.Leader = c.Leading()
	}
}

// startMCS starts, in wg, a goroutine that waits for the MCS API (found by runMCS) and
// then runs the datapath syncer and, on a gateway, the controller until ctx ends. Called
// after startMesh: the mesh node, if any, exists by then. Failures are logged and
// reported in /v1/status, never fatal: pod networking does not depend on MCS.
func (a *agent) startMCS(ctx context.Context, cfg *config.Config, wg *sync.WaitGroup) {
	o := a.opts.MCS
	if o == nil {
		return
	}
	a.mcs.set("waiting for the MCS API (ServiceExport/ServiceImport CRDs)")
	wg.Go(func() {
		// runMCS looks for the CRDs (and says so in the log); wait for its verdict rather
		// than polling discovery a second time.
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for !a.mcsUp.Load() {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		// The mesh node starts asynchronously (it may first create the key Secrets): give it
		// a bounded time, and hand the controller a nil interface, not a nil *mesh.Node,
		// when it does not run.
		var node mcs.MeshNode
		for i := 0; a.opts.Mesh != nil && i < 60; i++ {
			if n := a.meshNode.Load(); n != nil {
				node = n
				break
			}
			// startMesh has decided already when the node is not a gateway or the mesh
			// failed: no point waiting (the datapath would start a minute late).
			if why, _ := a.meshSkipped.Load().(string); why != "" {
				break
			}
			if why, _ := a.meshErr.Load().(string); why != "" {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		var inner sync.WaitGroup
		defer inner.Wait()
		ctrlMsg := a.runMCSController(ctx, cfg, node, &inner)
		dpMsg := a.runMCSDatapath(ctx, cfg, o, &inner)
		a.mcs.set("%s; %s", ctrlMsg, dpMsg)
	})
}

// runMCSController starts the controller in wg when this agent runs the mesh and returns
// what it did, for /v1/status.
func (a *agent) runMCSController(ctx context.Context, cfg *config.Config, node mcs.MeshNode, wg *sync.WaitGroup) string {
	if node == nil {
		return "controller off: the mesh does not run on this agent (not a gateway, --mesh=false, or it failed to start)"
	}
	if !cfg.ClusterSetIPRange.IsValid() {
		return "controller off: no usable " + config.KeyClusterSetIPRange + " (see the configuration warnings)"
	}
	var reserved []netip.Prefix
	for _, p := range []netip.Prefix{cfg.ClusterCIDR, cfg.ServiceCIDR} {
		if p.IsValid() {
			reserved = append(reserved, p)
		}
	}
	c, err := mcs.New(mcs.Options{Kube: a.clients.Kube, MCS: a.clients.MCS, ClusterID: cfg.ClusterID,
		Identity: a.opts.NodeName, LeaseNamespace: a.opts.ConfigNamespace, Announcer: mcs.NewMeshAnnouncer(node),
		ClusterSetIPRange: cfg.ClusterSetIPRange, Reserved: reserved, CRDWait: a.opts.MCSRetryInterval, Logger: a.log})
	if err != nil {
		a.log.Error("MCS controller not started", "err", err)
		return "controller off: " + err.Error()
	}
	a.mcs.ctrl.Store(c)
	a.log.Info("MCS controller running", "clustersetIPRange", cfg.ClusterSetIPRange, "lease", a.opts.ConfigNamespace+"/"+mcs.DefaultLeaseName)
	wg.Go(func() {
		if err := c.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("MCS controller stopped", "err", err)
			a.mcs.set("controller stopped: %v", err)
		}
	})
	return "controller running (clusterset range " + cfg.ClusterSetIPRange.String() + ")"
}

// runMCSDatapath starts the ClusterSetIP datapath syncer in wg and returns what it did.
func (a *agent) runMCSDatapath(ctx context.Context, cfg *config.Config, o *MCSOptions, wg *sync.WaitGroup) string {
	if o.NoDatapath {
		return "datapath off"
	}
	prog, err := datapath.New(datapath.Options{NetNS: o.NetNSPath})
	if err != nil {
		a.log.Error("ClusterSetIP datapath not started", "err", err)
		return "datapath off: " + err.Error()
	}
	ds, err := mcs.NewDatapathSyncer(mcs.DatapathOptions{Kube: a.clients.Kube, MCS: a.clients.MCS, ClusterID: cfg.ClusterID,
		Datapath: prog, Priority: QoSPriority, CRDWait: a.opts.MCSRetryInterval, Logger: a.log,
		ClusterHealthy: a.clusterReachable})
	if err != nil {
		prog.Close()
		a.log.Error("ClusterSetIP datapath not started", "err", err)
		return "datapath off: " + err.Error()
	}
	a.mcs.ds.Store(ds)
	wg.Go(func() {
		defer prog.Close()
		defer a.mcs.ds.Store(nil)
		if err := ds.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("ClusterSetIP datapath stopped", "err", err)
		}
	})
	return "datapath running"
}

// clusterReachable reports whether a remote cluster has a probed path up, so the
// ClusterSetIP datapath leaves out the endpoints of a cluster whose paths are all down
// before its announcements expire. With no path monitor (a node that is not a gateway) or
// no probed path to the cluster, the mesh alone decides (expiry, failure detection).
func (a *agent) clusterReachable(cluster string) bool {
	svc := a.pathsSvc.Load()
	if svc == nil {
		return true
	}
	return reachable(svc.Monitor().Snapshot(time.Now()), cluster)
}

func reachable(snap paths.Snapshot, cluster string) bool {
	probed := false
	for _, p := range snap.Paths {
		if p.Dst != cluster {
			continue
		}
		if p.State != paths.StateDown {
			return true // up, or not measured yet: not evidence of an outage
		}
		probed = true
	}
	return !probed
}

// downClusters is the sorted list of remote clusters whose probed paths are all down.
func downClusters(snap paths.Snapshot) string {
	var down []string
	for _, p := range snap.Paths {
		if !slices.Contains(down, p.Dst) && !reachable(snap, p.Dst) {
			down = append(down, p.Dst)
		}
	}
	slices.Sort(down)
	return strings.Join(down, ",")
}

package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/mesh/trust"
)

// MeshOptions turn the gateway mesh on (Options.Mesh; nil: off). Zero values take the
// defaults noted. Everything about the cluster (id, CIDRs, remote clusters, multicast
// group) comes from the agent's configuration; these are the node-local knobs.
type MeshOptions struct {
	// BindAddr and BindPort are the gossip listener (default 0.0.0.0:7946).
	BindAddr string
	BindPort int
	// AdvertiseAddr and AdvertisePort are what peers are told (default: memberlist picks
	// from the bound address).
	AdvertiseAddr string
	AdvertisePort int
	// BeaconInterfaces are the multicast interfaces (default: every multicast interface).
	BeaconInterfaces []string
	// BeaconInterval is the time between beacons (default 5s).
	BeaconInterval time.Duration
	// DisableBeacons turns multicast discovery off (remote-clusters seeds only).
	DisableBeacons bool
	// ClusterKeyFile and GossipKeyFile, when ClusterKeyFile is set, take the keys from
	// files (edge mode) instead of the Secrets patronus-cluster-key and
	// patronus-gossip-key in the agent's namespace.
	ClusterKeyFile string
	GossipKeyFile  string
	// Role tag (default "gateway").
	Role string
	// Profile is the gossip timing: "lan" (default) or "local" (fast failure detection).
	Profile string
	// Refresh re-broadcasts own announcements (default 30s); TTL is their lifetime (3×).
	Refresh time.Duration
	TTL     time.Duration
	// ReconnectInterval retries failed members (default 10s).
	ReconnectInterval time.Duration
	// EventHandlers run on member and user events, like serf's --event-handler.
	EventHandlers []mesh.EventHandler
}

// GatewayLabel marks gateway nodes (label or annotation "true" on the Node). When no
// Node carries it, every node is a gateway (docs/CONTRACT.md).
const GatewayLabel = "patronus.io/gateway"

// isGateway reads the Node objects once at start: a later change of the marks applies on
// the agent's next start. Edge mode (key files) and an unreadable Node list count as a
// gateway: the mesh is on by default and an API hiccup must not keep it off.
func (a *agent) isGateway(ctx context.Context) (bool, string) {
	if a.opts.Mesh.ClusterKeyFile != "" || a.clients == nil {
		return true, ""
	}
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	nodes, err := a.clients.Kube.Nodes().List(lctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		a.log.Warn("cannot list Nodes to find the gateways; running the mesh", "err", err)
		return true, ""
	}
	var marked []string
	for _, n := range nodes.Items {
		if n.Labels[GatewayLabel] == "true" || n.Annotations[GatewayLabel] == "true" {
			if n.Name == a.opts.NodeName {
				return true, ""
			}
			marked = append(marked, n.Name)
		}
	}
	if len(marked) == 0 {
		return true, ""
	}
	return false, fmt.Sprintf("%d Node(s) are marked %s=true and this one is not", len(marked), GatewayLabel)
}

// errMeshNotRunning is what the mesh endpoints answer before the node is up.
var errMeshNotRunning = errors.New("the mesh is not running on this agent")

// meshHandler serves the mesh's local API paths by delegating to the running node, so the
// paths are mounted at start (the mux is built before the configuration is known) and
// answer 503 until the node exists.
type meshHandler struct{ node *atomic.Pointer[mesh.Node] }

func (h meshHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := h.node.Load()
	if n == nil {
		http.Error(w, errMeshNotRunning.Error(), http.StatusServiceUnavailable)
		return
	}
	n.HTTPHandler().ServeHTTP(w, r)
}

// meshHandlers are the mesh's local API handlers.
func (a *agent) meshHandlers() []Handler {
	if a.opts.Mesh == nil {
		return nil
	}
	h := meshHandler{node: &a.meshNode}
	out := make([]Handler, 0, len(mesh.APIPaths))
	for _, p := range mesh.APIPaths {
		out = append(out, Handler{Pattern: p, Handler: h})
	}
	return out
}

// meshConfig is the node options derived from the agent's configuration; kept separate
// from the key loading so it is testable without an API server.
func meshConfig(cfg *config.Config, o *MeshOptions, nodeName, version string) (mesh.Options, []netip.Prefix) {
	var local []netip.Prefix
	for _, p := range []netip.Prefix{cfg.ClusterCIDR, cfg.ServiceCIDR} {
		if p.IsValid() {
			local = append(local, p)
		}
	}
	var pods []netip.Prefix
	if cfg.ClusterCIDR.IsValid() {
		pods = []netip.Prefix{cfg.ClusterCIDR}
	}
	role := o.Role
	if role == "" {
		role = "gateway"
	}
	mo := mesh.Options{
		NodeName: nodeName, ClusterID: cfg.ClusterID,
		BindAddr: o.BindAddr, BindPort: o.BindPort, AdvertiseAddr: o.AdvertiseAddr, AdvertisePort: o.AdvertisePort,
		Tags:           mesh.Tags{Role: role, PodCIDRs: pods, Version: version},
		DisableBeacons: o.DisableBeacons, BeaconGroup: cfg.MulticastGroup, BeaconInterfaces: o.BeaconInterfaces,
		BeaconInterval: o.BeaconInterval,
		// The cluster's pod CIDR and service CIDR: what remote gateways route here.
		Prefixes: local,
		Refresh:  o.Refresh, TTL: o.TTL, Profile: o.Profile, ReconnectInterval: o.ReconnectInterval,
		EventHandlers: o.EventHandlers,
	}
	return mo, local
}

// startMesh builds the trust material (keys from the Secrets, created if absent, or from
// files), creates the node and runs it in wg until ctx ends. A mesh that cannot start is
// logged and reported in /v1/status, not fatal: pod networking on this node does not
// depend on it.
func (a *agent) startMesh(ctx context.Context, cfg *config.Config, wg *sync.WaitGroup) {
	o := a.opts.Mesh
	if o == nil {
		return
	}
	if gw, why := a.isGateway(ctx); !gw {
		a.meshSkipped.Store(why)
		a.log.Info("not a gateway node: mesh not started", "reason", why)
		a.startTunnelRoutes(ctx, cfg, wg) // remote clusters via the gateway (tunnel.go)
		return
	}
	n, reg, err := a.newMeshNode(ctx, cfg, o)
	if err != nil {
		a.meshErr.Store(err.Error())
		a.log.Error("mesh not started", "err", err)
		return
	}
	a.meshNode.Store(n)
	a.startTunnel(ctx, cfg, n, wg)
	a.log.Info("mesh node running", "cluster", cfg.ClusterID, "multicastGroup", cfg.MulticastGroup,
		"remoteClusters", len(cfg.RemoteClusters))
	wg.Go(func() {
		defer reg.unregisterAll()
		if err := n.Run(ctx); err != nil && ctx.Err() == nil {
			a.meshErr.Store(err.Error())
			a.log.Error("mesh stopped", "err", err)
		}
		a.meshNode.Store(nil)
	})
}

func (a *agent) newMeshNode(ctx context.Context, cfg *config.Config, o *MeshOptions) (*mesh.Node, *trackingRegisterer, error) {
	mo, local := meshConfig(cfg, o, a.opts.NodeName, a.opts.Version)
	var keys trust.KeySource
	if o.ClusterKeyFile != "" {
		keys = trust.FileSource{ClusterKeyFile: o.ClusterKeyFile, GossipKeyFile: o.GossipKeyFile}
		if o.GossipKeyFile != "" {
			mo.KeyringFile = o.GossipKeyFile
		}
	} else {
		keys = trust.SecretSource{Secrets: a.clients.Kube.Secrets(a.opts.ConfigNamespace)}
	}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tr, err := mesh.BuildTrust(tctx, mesh.TrustConfig{ClusterID: cfg.ClusterID, NodeName: a.opts.NodeName,
		Keys: keys, LocalCIDRs: local, Remotes: cfg.RemoteClusters})
	if err != nil {
		return nil, nil, fmt.Errorf("mesh keys: %w", err)
	}
	mo.Identity, mo.Verifier, mo.GossipKeys, mo.Seeds = tr.Identity, tr.Verifier, tr.GossipKeys, tr.Seeds
	mo.Store = a.db
	mo.Logger = a.log.With("component", "mesh")
	reg := &trackingRegisterer{r: a.opts.Registry}
	mo.Registerer = reg
	n, err := mesh.New(mo)
	if err != nil {
		reg.unregisterAll()
		return nil, nil, err
	}
	return n, reg, nil
}

// meshStatus is the mesh part of /v1/status: the live node's view, or the state it last
// persisted in the database while it is not running (yet).
func (a *agent) meshStatus(ctx context.Context) *localapi.Mesh {
	if a.opts.Mesh == nil {
		return nil
	}
	v := &localapi.Mesh{}
	v.Error, _ = a.meshErr.Load().(string)
	if why, _ := a.meshSkipped.Load().(string); why != "" {
		v.NotGateway = why
		v.RemoteInClear, _ = a.tunnel.inClear.Load().(string)
		return v
	}
	if n := a.meshNode.Load(); n != nil {
		v.Running = true
		v.Members, v.Alive = mesh.CountMembers(n.Members())
		v.Announcements = len(n.State().List())
		v.ClaimsOnBehalf = int(a.nodeNet.onBehalf.Load())
		return v
	}
	if s, ok, err := mesh.LoadState(ctx, a.db); err == nil && ok {
		v.Members, v.Alive = mesh.CountMembers(s.Members)
		v.Announcements = len(s.Announcements)
		v.SavedAt = s.SavedAt
	}
	return v
}

// trackingRegisterer registers on the agent's registry and remembers what it registered,
// so a stopped mesh (or an agent restarted in the same process) leaves no collectors
// behind that would make the next registration fail.
type trackingRegisterer struct {
	r  prometheus.Registerer
	mu sync.Mutex
	cs []prometheus.Collector
}

func (t *trackingRegisterer) Register(c prometheus.Collector) error {
	if err := t.r.Register(c); err != nil {
		return err
	}
	t.mu.Lock()
	t.cs = append(t.cs, c)
	t.mu.Unlock()
	return nil
}

func (t *trackingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := t.Register(c); err != nil {
			panic(err)
		}
	}
}

func (t *trackingRegisterer) Unregister(c prometheus.Collector) bool { return t.r.Unregister(c) }

func (t *trackingRegisterer) unregisterAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.cs {
		t.r.Unregister(c)
	}
	t.cs = nil
}

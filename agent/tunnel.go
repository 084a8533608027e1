package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/dataplane/route"
	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/dataplane/wg"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
	"github.com/patronus/patronus/nodenet"
)

// TunnelOptions turn the WireGuard tunnel dataplane on for gateway nodes that run the
// mesh (Options.Tunnel; nil: off). Peers, endpoints and routes come only from verified
// tunnel announcements in the mesh state (dataplane/tunnel).
type TunnelOptions struct {
	// ListenPort is the WireGuard UDP port (default wg.DefaultPort, 51820).
	ListenPort int
	// Endpoint is the underlay address announced to remote gateways (default: the mesh's
	// advertised gossip address with ListenPort).
	Endpoint netip.AddrPort
	// UplinkMTU is the underlay MTU; the tunnel's is this minus wg.Overhead (default 1500).
	UplinkMTU int
	// Keepalive is the peers' persistent keepalive (0: tunnel.DefaultKeepalive, 25 s;
	// negative: off). It keeps NAT mappings open and makes a newly added peer handshake
	// at once (an agent restart or a key rotation waits less for traffic); dataplane/wg
	// keeps two gateways adding each other at once from crossing their handshakes.
	Keepalive time.Duration
	// NoPathTunnels keeps one WireGuard device per gateway even when a remote cluster
	// has several paths (its peer's endpoint then follows the default class's
	// selection). By default a gateway with path monitoring and no --path-device opens a
	// device per path (tunnel.PathRefs) and steers pods per QoS class across them.
	NoPathTunnels bool
}

// tunnelState is the running tunnel dataplane (nil pointers: not running).
type tunnelState struct {
	rec atomic.Pointer[tunnel.Reconciler]
	rot atomic.Pointer[tunnel.Rotator]
	err atomic.Value // string: why the tunnel dataplane is not running
	// inClear (string), on a node that is not a gateway with node encryption on: the remote
	// clusters' CIDRs routed to the gateway outside WireGuard and why ("" when none).
	inClear atomic.Value
	// pathDevs is the interface of each path (path id → device) when this gateway runs
	// per-path devices; nil otherwise.
	pathDevs atomic.Pointer[map[string]string]
}

// pathDevices is the per-path device of each path id (nil: no per-path devices).
func (st *tunnelState) pathDevices() map[string]string {
	if m := st.pathDevs.Load(); m != nil {
		return *m
	}
	return nil
}

var errTunnelNotRunning = errors.New("the tunnel dataplane is not running on this agent")

// tunnelHandlers are GET /v1/tunnels and POST /v1/keys/rotate; mounted at start and
// answering 503 until the dataplane runs (the mux is built before the configuration).
func (a *agent) tunnelHandlers() []Handler {
	if a.opts.Tunnel == nil || a.opts.Mesh == nil {
		return nil
	}
	st := &a.tunnel
	notRunning := func(w http.ResponseWriter) {
		msg := errTunnelNotRunning.Error()
		if e, _ := st.err.Load().(string); e != "" {
			msg += ": " + e
		}
		http.Error(w, msg, http.StatusServiceUnavailable)
	}
	return []Handler{
		{Pattern: "GET " + tunnel.PathTunnels, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if rec := st.rec.Load(); rec != nil {
				rec.ServeTunnels(w, r)
				return
			}
			notRunning(w)
		})},
		{Pattern: "POST " + tunnel.PathKeysRotate, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if rot := st.rot.Load(); rot != nil {
				rot.ServeRotate(w, r)
				return
			}
			notRunning(w)
		})},
	}
}

// tunnelEndpoint is the underlay endpoint to announce: the configured one, else the
// mesh's advertised (or bound, or serf-chosen) gossip address with the WireGuard port.
func tunnelEndpoint(o *TunnelOptions, m *MeshOptions, n *mesh.Node, port int) (netip.AddrPort, error) {
	if o.Endpoint.IsValid() {
		return o.Endpoint, nil
	}
	for _, s := range []string{m.AdvertiseAddr, m.BindAddr} {
		if ad, err := netip.ParseAddr(s); err == nil && !ad.IsUnspecified() {
			return netip.AddrPortFrom(ad.Unmap(), uint16(port)), nil
		}
	}
	if n != nil && n.Serf() != nil {
		if ad, ok := netip.AddrFromSlice(n.Serf().LocalMember().Addr); ok && !ad.IsUnspecified() {
			return netip.AddrPortFrom(ad.Unmap(), uint16(port)), nil
		}
	}
	return netip.AddrPort{}, errors.New("no underlay endpoint to announce: set --wg-endpoint or --gossip-advertise")
}

// startTunnel brings up the WireGuard device, routes, reconciler and key rotator on a
// gateway whose mesh node n was just created (not yet running: the first announcement
// goes out with the node's first broadcasts). Failure is logged and reported, not fatal.
func (a *agent) startTunnel(ctx context.Context, cfg *config.Config, n *mesh.Node, wgrp *sync.WaitGroup) {
	if a.opts.Tunnel == nil {
		return
	}
	if err := a.runTunnel(ctx, cfg, n, wgrp); err != nil {
		a.tunnel.err.Store(err.Error())
		a.log.Error("tunnel dataplane not started", "err", err)
	}
}

func (a *agent) runTunnel(ctx context.Context, cfg *config.Config, n *mesh.Node, wgrp *sync.WaitGroup) error {
	o := *a.opts.Tunnel
	if o.ListenPort == 0 {
		o.ListenPort = wg.DefaultPort
	}
	if o.UplinkMTU == 0 {
		o.UplinkMTU = 1500
	}
	ep, err := tunnelEndpoint(&o, a.opts.Mesh, n, o.ListenPort)
	if err != nil {
		return err
	}
	log := a.log.With("component", "tunnel")
	key, created, err := tunnel.LoadOrCreateKey(ctx, a.db, time.Now())
	if err != nil {
		return fmt.Errorf("wireguard key: %w", err)
	}
	spec := wg.Spec{Name: wg.InterfaceName(cfg.ClusterID), ListenPort: o.ListenPort, PrivateKey: key, MTU: o.UplinkMTU - wg.Overhead}
	dev, err := wg.Open(wg.Options{Logger: log}, spec)
	if err != nil {
		return fmt.Errorf("wireguard device %s: %w", spec.Name, err)
	}
	k, err := route.NewNetlinkKernel("")
	if err != nil {
		dev.Close()
		return fmt.Errorf("routes: %w", err)
	}
	events, err := k.Subscribe(ctx.Done())
	if err != nil {
		k.Close()
		dev.Close()
		return fmt.Errorf("route events: %w", err)
	}
	router := route.NewRouter(route.Options{Kernel: k, Events: events, Logger: log})
	refs := tunnel.PathRefs(cfg.RemoteClusters)
	pathDevs, pathSpecs, err := a.openPathDevices(cfg, spec, refs, log)
	if err != nil {
		// One tunnel per cluster still works (its endpoint follows the selection).
		log.Error("per-path tunnels not opened: one tunnel per remote cluster", "err", err)
	}
	closeAll := func() {
		for _, d := range pathDevs {
			d.Close()
		}
		dev.Close()
	}
	rec := tunnel.NewReconciler(tunnel.ReconcilerOptions{Device: dev, PathDevices: pathDevs, Routes: router, Logger: log,
		MSS: func(devs []string) error { return wg.EnsureMSSClamp("", devs) }})
	var pods []netip.Prefix
	if cfg.ClusterCIDR.IsValid() {
		pods = []netip.Prefix{cfg.ClusterCIDR}
	}
	rot := tunnel.NewRotator(tunnel.RotatorOptions{Device: dev, Spec: spec, CreatedAt: created, Store: a.db,
		Announce: n.Announce, Endpoints: []netip.AddrPort{ep}, PodCIDRs: pods, Interval: cfg.KeyRotation, Logger: log,
		PathDevices: pathSpecs})
	if err := rot.Announce(); err != nil {
		k.Close()
		closeAll()
		return fmt.Errorf("tunnel announcement: %w", err)
	}
	hints := tunnel.HintsFromRemoteClusters(cfg.RemoteClusters)
	keepalive := o.Keepalive
	switch {
	case keepalive == 0:
		keepalive = tunnel.DefaultKeepalive
	case keepalive < 0:
		keepalive = 0
	}
	base := func() tunnel.Input {
		return tunnel.Input{LocalCluster: cfg.ClusterID, Gateway: true, Hints: hints, Keepalive: keepalive, Paths: refs}
	}
	a.tunnel.rec.Store(rec)
	a.tunnel.rot.Store(rot)
	if len(pathDevs) > 0 {
		var pds []tunnel.PathDevice
		for k, d := range pathDevs {
			pds = append(pds, tunnel.PathDevice{Index: k, Name: d.Name()})
		}
		m := tunnel.PathDeviceMap(refs, spec.Name, pds)
		a.tunnel.pathDevs.Store(&m)
	}
	log.Info("tunnel dataplane running", "device", spec.Name, "port", o.ListenPort, "endpoint", ep,
		"publicKey", rot.PublicKey().String(), "pathDevices", len(pathDevs))
	var inner sync.WaitGroup
	inner.Go(func() { router.Run(ctx) })
	inner.Go(func() { _ = rec.Run(ctx, n.State(), base, 0, 0) })
	inner.Go(func() { _ = rot.Run(ctx) })
	wgrp.Go(func() {
		inner.Wait()
		a.tunnel.rec.Store(nil)
		a.tunnel.rot.Store(nil)
		a.tunnel.pathDevs.Store(nil)
		k.Close()
		// The userspace device lives in this process: closing it removes the interface.
		closeAll()
	})
	return nil
}

// openPathDevices opens a WireGuard device per path index ≥ 1 (tunnel.PathDeviceSpecs:
// same key and MTU as the main device, port +k) when this gateway steers per class with
// its own devices: path monitoring on, no --path-device, and some remote cluster with
// more than one path. Per-path kernel links of indexes no longer configured (left by an
// earlier run: kernel links outlive the agent) are deleted first. On error every device
// opened so far is closed again.
func (a *agent) openPathDevices(cfg *config.Config, spec wg.Spec, refs []tunnel.PathRef, log *slog.Logger) (map[int]wg.Device, []tunnel.DeviceSpec, error) {
	n := pathDeviceCount(&a.opts, refs)
	removeStalePathLinks(cfg.ClusterID, n, log)
	if n == 0 {
		return nil, nil, nil
	}
	specs, err := tunnel.PathDeviceSpecs(cfg.ClusterID, spec, n)
	if err != nil {
		return nil, nil, err
	}
	devs := map[int]wg.Device{}
	var out []tunnel.DeviceSpec
	for i, s := range specs {
		d, err := wg.Open(wg.Options{Logger: log}, s)
		if err != nil {
			for _, d := range devs {
				d.Close()
			}
			return nil, nil, fmt.Errorf("wireguard device %s (path index %d): %w", s.Name, i+1, err)
		}
		devs[i+1] = d
		out = append(out, tunnel.DeviceSpec{Device: d, Spec: s})
		if err := tunnel.ValidSourceByMark(s.Name); err != nil {
			log.Warn("per-path device: with reverse-path filtering on, its traffic is dropped", "err", err)
		}
	}
	log.Info("per-path tunnels", "devices", len(devs), "first", specs[0].Name, "ports", fmt.Sprintf("%d-%d", specs[0].ListenPort, specs[len(specs)-1].ListenPort))
	return devs, out, nil
}

// pathDeviceCount is how many per-path devices a gateway opens: the highest path index
// of the remote clusters when it steers with its own devices (path monitoring on, no
// --path-device, per-path tunnels not turned off), else 0.
func pathDeviceCount(o *Options, refs []tunnel.PathRef) int {
	if o.Tunnel == nil || o.Tunnel.NoPathTunnels || o.Paths == nil || len(o.Paths.Devices) > 0 {
		return 0
	}
	return tunnel.MaxPathIndex(refs)
}

// removeStalePathLinks deletes the kernel WireGuard links named like per-path devices of
// this cluster with an index above keep (a userspace device disappears with the process
// that made it; kernel links stay).
func removeStalePathLinks(cluster string, keep int, log *slog.Logger) {
	links, err := netlink.LinkList()
	if err != nil {
		log.Warn("listing links for stale per-path devices", "err", err)
		return
	}
	var names []string
	byName := map[string]netlink.Link{}
	for _, l := range links {
		if l.Type() == "wireguard" {
			names = append(names, l.Attrs().Name)
			byName[l.Attrs().Name] = l
		}
	}
	for _, name := range tunnel.StalePathDevices(cluster, names, keep) {
		if err := netlink.LinkDel(byName[name]); err != nil {
			log.Warn("removing a stale per-path device", "device", name, "err", err)
			continue
		}
		log.Info("removed the device of a path no longer configured", "device", name)
	}
}

// tunnelsStatus is the Tunnels list of /v1/status: the active tunnels of the last
// reconcile (empty when the dataplane is not running).
func (a *agent) tunnelsStatus() []localapi.Tunnel {
	out := []localapi.Tunnel{}
	rec := a.tunnel.rec.Load()
	if rec == nil {
		return out
	}
	st := rec.Status()
	for _, t := range st.Tunnels {
		ep := ""
		if t.Endpoint.IsValid() {
			ep = t.Endpoint.String()
		}
		out = append(out, localapi.Tunnel{Cluster: t.Cluster, Interface: st.Device, Endpoint: ep, Up: true})
	}
	return out
}

// nonGatewayResync is how often a node that is not a gateway re-reads the gateway Nodes
// and re-applies its routes to remote clusters.
const nonGatewayResync = 10 * time.Second

// nonGatewayLegCheck is how often such a node re-decides, from its own WireGuard device,
// which remote CIDRs go to the gateway over it (node encryption; see startTunnelRoutes).
const nonGatewayLegCheck = time.Second

// startTunnelRoutes runs on a node that is not a gateway (the mesh skipped it): the
// remote clusters' pod CIDRs (remote-clusters cidr) are routed to this cluster's gateway
// node, whose tunnel carries them (tunnel.RoutesViaGateway). The gateway is the Node
// marked patronus.io/gateway=true with the smallest name that has an IPv4 InternalIP
// (the one remote gateways' plans pick too); it and the interface it is reached on are
// re-read every nonGatewayResync, so a re-marked gateway is followed. With node
// encryption on, the CIDRs the gateway's peer on this node's WireGuard device carries are
// routed over that device instead (encryptedLeg), so they cross the underlay only inside
// WireGuard, as the gateway's answers already do; the decision is re-made every
// nonGatewayLegCheck, so a key that appears or goes, or encryption toggled, is followed too.
func (a *agent) startTunnelRoutes(ctx context.Context, cfg *config.Config, wgrp *sync.WaitGroup) {
	if a.opts.Tunnel == nil || a.clients == nil {
		return
	}
	hints := tunnel.HintsFromRemoteClusters(cfg.RemoteClusters)
	if !slices.ContainsFunc(hints, func(h tunnel.Hint) bool { return h.Cluster != cfg.ClusterID && len(h.CIDRs) > 0 }) {
		return // no remote cluster with a cidr: nothing to route
	}
	log := a.log.With("component", "tunnel")
	k, err := route.NewNetlinkKernel("")
	if err != nil {
		a.tunnel.err.Store("routes: " + err.Error())
		log.Error("routes to remote clusters not started", "err", err)
		return
	}
	events, err := k.Subscribe(ctx.Done())
	if err != nil {
		k.Close()
		a.tunnel.err.Store("route events: " + err.Error())
		log.Error("routes to remote clusters not started", "err", err)
		return
	}
	router := route.NewRouter(route.Options{Kernel: k, Events: events, Logger: log})
	wgrp.Go(func() { router.Run(ctx) })
	wgrp.Go(func() {
		defer k.Close()
		var (
			last    string
			g       gatewayRef
			dev     string
			gErr    error
			applied []route.Route
			listed  time.Time
		)
		// The gateway Node (and the interface towards it) is re-read every
		// nonGatewayResync, also after a failure; this node's own WireGuard device is looked
		// at every nonGatewayLegCheck, so a leg goes over ptw0 within about a second of the
		// device and the gateway's peer being there (not a resync later), and a route over
		// ptw0 whose peer went away falls back to plain as fast, instead of dropping the
		// traffic until the next resync.
		t := time.NewTicker(nonGatewayLegCheck)
		defer t.Stop()
		for {
			resync := listed.IsZero() || time.Since(listed) >= nonGatewayResync
			if resync {
				g, gErr = a.gatewayNode(ctx)
				if gErr == nil {
					dev, gErr = linkTowards(g.addr)
				}
				listed = time.Now()
			}
			err := gErr
			var routes []route.Route
			var leg nodenet.RemoteLeg
			if err == nil {
				routes = tunnel.RoutesViaGateway(cfg.ClusterID, hints, g.addr, dev, 0)
				routes, leg = a.encryptedLeg(g, routes)
			}
			if resync || !slices.Equal(routes, applied) {
				if _, serr := router.Set(route.Desired{Routes: routes}); serr != nil {
					if err == nil {
						err = serr
					}
					applied = nil // try again at the next check
				} else {
					applied = routes
				}
			}
			msg := nonGatewayMessage(g, dev, leg, err)
			a.tunnel.err.Store(msg)
			a.tunnel.inClear.Store(leg.String())
			if msg != last {
				switch {
				case err != nil:
					log.Warn("routes to remote clusters via the gateway", "err", err)
				case len(leg.Plain) > 0 && leg.Strict:
					log.Warn("remote clusters' traffic via the gateway DROPPED: not encrypted and node encryption is strict", "gateway", g.name,
						"via", g.addr, "dev", dev, "routes", len(routes), "dropped", leg.Plain, "reason", leg.Reason)
				case len(leg.Plain) > 0:
					log.Warn("routing remote clusters via the gateway NOT encrypted although node encryption is on", "gateway", g.name,
						"via", g.addr, "dev", dev, "routes", len(routes), "plain", leg.Plain, "reason", leg.Reason)
				default:
					log.Info("routing remote clusters via the gateway", "gateway", g.name, "via", g.addr, "dev", dev, "routes", len(routes),
						"encryptedOver", encryptedDev(leg))
				}
				last = msg
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// gatewayRef is the cluster's gateway node as a node that is not one sees it.
type gatewayRef struct {
	name string
	addr netip.Addr  // its IPv4 InternalIP
	key  wgtypes.Key // its published node-to-node WireGuard key (zero: none)
}

// gatewayNode is the cluster's gateway as a node that is not one routes to it.
func (a *agent) gatewayNode(ctx context.Context) (gatewayRef, error) {
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	nodes, err := a.clients.Kube.Nodes().List(lctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return gatewayRef{}, fmt.Errorf("list Nodes: %w", err)
	}
	items := slices.Clone(nodes.Items)
	slices.SortFunc(items, func(x, y corev1.Node) int { return strings.Compare(x.Name, y.Name) })
	for _, n := range items {
		if n.Labels[GatewayLabel] != "true" && n.Annotations[GatewayLabel] != "true" {
			continue
		}
		for _, ad := range n.Status.Addresses {
			if ad.Type != corev1.NodeInternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(ad.Address); err == nil && ip.Is4() {
				return gatewayRef{name: n.Name, addr: ip, key: nodenet.ParseWGKey(n.Annotations[nodenet.AnnotationWGKey])}, nil
			}
		}
	}
	return gatewayRef{}, fmt.Errorf("no Node marked %s=true has an IPv4 InternalIP", GatewayLabel)
}

// encryptedLeg moves the routes whose CIDR the gateway's peer on the node WireGuard
// device carries onto that device (nodenet.RemoteLeg: node encryption on, the gateway's
// key a peer of this node's device, its allowed IPs covering the CIDR), so that traffic
// leaves this node only inside WireGuard; the others keep their plain route via the
// gateway and the leg says why. Without the nodenet controller (no --manage-conflist)
// there is no node encryption: the routes stay as they are; the same when nodenet manages
// another namespace (tests): its device is not in this one, where these routes go.
func (a *agent) encryptedLeg(g gatewayRef, routes []route.Route) ([]route.Route, nodenet.RemoteLeg) {
	c := a.nodeNet.ctrl.Load()
	if c == nil || len(routes) == 0 || a.opts.NodeNet == nil || a.opts.NodeNet.NetNSPath != "" {
		return routes, nodenet.RemoteLeg{}
	}
	dsts := make([]netip.Prefix, len(routes))
	for i, r := range routes {
		dsts[i] = r.Dst
	}
	leg := c.RemoteLeg(g.name, g.key, dsts)
	return overWireGuard(routes, leg.Encrypted), leg
}

// overWireGuard turns the routes to the enc CIDRs into on-link routes over the node
// WireGuard device: no next hop, because WireGuard picks the gateway's peer by its
// allowed IPs (so the route stays the same when the gateway changes between two
// encrypted nodes).
func overWireGuard(routes []route.Route, enc []netip.Prefix) []route.Route {
	out := slices.Clone(routes)
	for i, r := range out {
		if slices.Contains(enc, r.Dst) {
			out[i] = route.Route{Dst: r.Dst, Dev: nodenet.WGDevice, Table: r.Table}
		}
	}
	return out
}

// encryptedDev is the device the encrypted routes use ("" when none is).
func encryptedDev(leg nodenet.RemoteLeg) string {
	if len(leg.Encrypted) == 0 {
		return ""
	}
	return nodenet.WGDevice
}

// nonGatewayMessage is what a node that is not a gateway says about its routes to the
// remote clusters (GET /v1/tunnels' 503 text, logged once per change).
func nonGatewayMessage(g gatewayRef, dev string, leg nodenet.RemoteLeg, err error) string {
	if err != nil {
		return "not a gateway node, and the routes to remote clusters via the gateway failed: " + err.Error()
	}
	via := "via gateway " + g.name + " (" + g.addr.String() + " dev " + dev + ")"
	switch {
	case len(leg.Plain) > 0:
		return "not a gateway node: remote clusters' pod CIDRs are routed " + via + "; node encryption is on but " + leg.String()
	case len(leg.Encrypted) > 0:
		return "not a gateway node: remote clusters' pod CIDRs are routed to gateway " + g.name + " (" + g.addr.String() +
			") over the node WireGuard device " + nodenet.WGDevice + " (encrypted)"
	}
	return "not a gateway node: remote clusters' pod CIDRs are routed " + via
}

// linkTowards is the interface the kernel reaches addr on.
func linkTowards(addr netip.Addr) (string, error) {
	rs, err := netlink.RouteGet(addr.AsSlice())
	if err != nil || len(rs) == 0 {
		return "", fmt.Errorf("no route to the gateway %s: %v", addr, err)
	}
	l, err := netlink.LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		return "", fmt.Errorf("interface towards the gateway %s: %w", addr, err)
	}
	return l.Attrs().Name, nil
}

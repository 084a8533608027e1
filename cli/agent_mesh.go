package cli

import (
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/patronus/patronus/agent"
	"github.com/patronus/patronus/mesh"
)

// agentGatewayFlags are `patronus agent`'s mesh and path-monitoring flags. The cluster id,
// CIDRs, remote clusters and multicast group come from the configuration (ConfigMap), so
// a DaemonSet needs none of these.
type agentGatewayFlags struct {
	mesh, paths, noBeacons          bool
	bind, advertise, profile, role  string
	ifaces, handlers                []string
	clusterKey, gossipKey           string
	beaconEvery, refresh, reconnect time.Duration
	respond, l7Socket               string
	pathDevices                     []string
}

func (g *agentGatewayFlags) register(f *pflag.FlagSet) {
	f.BoolVar(&g.mesh, "mesh", true, "run the gateway mesh node (multicast discovery, Serf gossip, signed announcements)")
	f.StringVar(&g.bind, "gossip-bind", "0.0.0.0:"+strconv.Itoa(mesh.DefaultGossipPort), "gossip bind address host:port")
	f.StringVar(&g.advertise, "gossip-advertise", "", "gossip address announced to peers (default: chosen from the bind address)")
	f.StringArrayVar(&g.ifaces, "multicast-iface", nil, "interface to send and receive beacons on (repeatable; default every multicast interface)")
	f.DurationVar(&g.beaconEvery, "beacon-interval", 5*time.Second, "time between beacons")
	f.BoolVar(&g.noBeacons, "no-beacons", false, "disable multicast discovery (remote-clusters seeds only)")
	f.StringVar(&g.clusterKey, "cluster-key", "", "edge mode: cluster signing key file (default: Secret patronus-cluster-key, created if absent)")
	f.StringVar(&g.gossipKey, "gossip-key", "", "edge mode, with --cluster-key: gossip keyring file (default: Secret patronus-gossip-key)")
	f.StringArrayVar(&g.handlers, "event-handler", nil, "[filter[,filter]=]script run on mesh events, like serf (repeatable)")
	f.StringVar(&g.role, "mesh-role", "gateway", "role tag of this node in the mesh")
	f.StringVar(&g.profile, "mesh-profile", "lan", "gossip timing: lan, or local (fast failure detection)")
	f.DurationVar(&g.refresh, "mesh-refresh", 30*time.Second, "re-broadcast interval of own announcements (lifetime 3x)")
	f.DurationVar(&g.reconnect, "mesh-reconnect-interval", 10*time.Second, "retry interval for failed members")
	f.BoolVar(&g.paths, "paths", true, "probe the paths to the remote clusters (when remote-clusters lists endpoints)")
	f.StringVar(&g.respond, "probe-respond", "", "probe responder address (default :7948; off: none)")
	f.StringVar(&g.l7Socket, "l7-metrics-socket", "", "L7 metrics socket (default /var/run/patronus/metrics.sock; off: none)")
	f.StringArrayVar(&g.pathDevices, "path-device", nil, "PATH_ID=DEV: path PATH_ID's traffic leaves by interface DEV (a per-path tunnel); with any, pods are steered per QoS class (repeatable)")
}

func (g *agentGatewayFlags) apply(o *agent.Options) error {
	if g.mesh {
		m := &agent.MeshOptions{BeaconInterfaces: g.ifaces, BeaconInterval: g.beaconEvery, DisableBeacons: g.noBeacons,
			ClusterKeyFile: g.clusterKey, GossipKeyFile: g.gossipKey, Role: g.role, Profile: g.profile,
			Refresh: g.refresh, ReconnectInterval: g.reconnect}
		if g.gossipKey != "" && g.clusterKey == "" {
			return usagef("--gossip-key needs --cluster-key (keys come from files or both from Secrets)")
		}
		var err error
		if m.BindAddr, m.BindPort, err = splitHostPortDefault(g.bind, mesh.DefaultGossipPort); err != nil {
			return usagef("--gossip-bind: %v", err)
		}
		if g.advertise != "" {
			if m.AdvertiseAddr, m.AdvertisePort, err = splitHostPortDefault(g.advertise, m.BindPort); err != nil {
				return usagef("--gossip-advertise: %v", err)
			}
		}
		switch g.profile {
		case "lan", "local":
		default:
			return usagef("--mesh-profile %q: use lan or local", g.profile)
		}
		for _, s := range g.handlers {
			h, err := mesh.ParseEventHandler(s)
			if err != nil {
				return usagef("--event-handler: %v", err)
			}
			m.EventHandlers = append(m.EventHandlers, h)
		}
		o.Mesh = m
	}
	if g.paths {
		o.Paths = &agent.PathsOptions{ResponderAddr: g.respond, MetricsSocket: g.l7Socket}
		for _, pd := range g.pathDevices {
			id, dev, ok := strings.Cut(pd, "=")
			if !ok || id == "" || dev == "" || len(dev) > 15 {
				return usagef("--path-device %q: want PATH_ID=DEV (DEV at most 15 characters)", pd)
			}
			if o.Paths.Devices == nil {
				o.Paths.Devices = map[string]string{}
			}
			o.Paths.Devices[id] = dev
		}
	}
	return nil
}

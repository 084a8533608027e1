package cli

import (
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/patronus/patronus/agent"
	"github.com/patronus/patronus/dataplane/wg"
)

// agentTunnelFlags are `patronus agent`'s WireGuard tunnel flags. The tunnel runs only
// where the mesh runs (gateway nodes); peers come from the verified mesh state.
type agentTunnelFlags struct {
	on       bool
	port     int
	endpoint string
	mtu      int
	// keepalive 0 turns persistent keepalive off (agent.TunnelOptions: negative).
	keepalive time.Duration
	// pathTunnels: a WireGuard device per path when a remote cluster has several.
	pathTunnels bool
}

func (g *agentTunnelFlags) register(f *pflag.FlagSet) {
	f.BoolVar(&g.on, "tunnel", true, "run the WireGuard tunnel dataplane on gateway nodes where the mesh runs")
	f.IntVar(&g.port, "wg-port", wg.DefaultPort, "WireGuard UDP listen port")
	f.StringVar(&g.endpoint, "wg-endpoint", "", "underlay endpoint host[:port] announced to remote gateways (default: the gossip advertise address's host, --wg-port)")
	f.IntVar(&g.mtu, "uplink-mtu", 1500, "underlay MTU; the tunnel's MTU is this minus the WireGuard overhead (80)")
	f.DurationVar(&g.keepalive, "wg-keepalive", 25*time.Second, "WireGuard persistent keepalive to remote gateways (0: off)")
	f.BoolVar(&g.pathTunnels, "path-tunnels", true, "a WireGuard device per path (wg<k>-<cluster id>, port --wg-port+k) when a remote cluster has several paths, pods steered across them per QoS class (false: one device whose endpoint follows the default class's path)")
}

func (g *agentTunnelFlags) apply(o *agent.Options) error {
	if !g.on || o.Mesh == nil {
		return nil
	}
	if g.port <= 0 || g.port > 65535 {
		return usagef("--wg-port %d: not a UDP port", g.port)
	}
	if g.mtu < 576+wg.Overhead || g.mtu > 65535 {
		return usagef("--uplink-mtu %d: out of range", g.mtu)
	}
	if g.keepalive < 0 {
		return usagef("--wg-keepalive %s: negative", g.keepalive)
	}
	t := &agent.TunnelOptions{ListenPort: g.port, UplinkMTU: g.mtu, Keepalive: g.keepalive, NoPathTunnels: !g.pathTunnels}
	if g.keepalive == 0 {
		t.Keepalive = -1
	}
	if g.endpoint != "" {
		ap, err := parseEndpoint(g.endpoint, g.port)
		if err != nil {
			return usagef("--wg-endpoint: %v", err)
		}
		t.Endpoint = ap
	}
	o.Tunnel = t
	return nil
}

// parseEndpoint reads "ip" or "ip:port" (port defaulting to def).
func parseEndpoint(s string, def int) (netip.AddrPort, error) {
	if ad, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ad, uint16(def)), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ad, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return netip.AddrPort{}, &net.AddrError{Err: "bad port", Addr: s}
	}
	return netip.AddrPortFrom(ad, uint16(p)), nil
}

package cli

import (
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/patronus/patronus/agent"
)

func TestAgentTunnelFlags(t *testing.T) {
	for _, tc := range []struct {
		name     string
		g        agentTunnelFlags
		mesh     bool
		want     string // endpoint; "-" means no tunnel options
		wantPort int
		wantKA   time.Duration // expected TunnelOptions.Keepalive
		wantErr  bool
		pathsOn  bool // expected !TunnelOptions.NoPathTunnels
	}{
		{name: "default with mesh", g: agentTunnelFlags{on: true, port: 51820, mtu: 1500, keepalive: 25 * time.Second}, mesh: true, want: "invalid AddrPort", wantPort: 51820, wantKA: 25 * time.Second},
		{name: "no mesh, no tunnel", g: agentTunnelFlags{on: true, port: 51820, mtu: 1500}, want: "-"},
		{name: "off", g: agentTunnelFlags{on: false, port: 51820, mtu: 1500}, mesh: true, want: "-"},
		{name: "endpoint host", g: agentTunnelFlags{on: true, port: 4000, mtu: 1500, endpoint: "192.0.2.1"}, mesh: true, want: "192.0.2.1:4000", wantPort: 4000, wantKA: -1},
		{name: "endpoint host:port", g: agentTunnelFlags{on: true, port: 51820, mtu: 1500, endpoint: "192.0.2.1:443"}, mesh: true, want: "192.0.2.1:443", wantPort: 51820, wantKA: -1},
		{name: "bad endpoint", g: agentTunnelFlags{on: true, port: 51820, mtu: 1500, endpoint: "gw.example:x"}, mesh: true, wantErr: true},
		{name: "bad port", g: agentTunnelFlags{on: true, port: 70000, mtu: 1500}, mesh: true, wantErr: true},
		{name: "bad mtu", g: agentTunnelFlags{on: true, port: 51820, mtu: 100}, mesh: true, wantErr: true},
		{name: "keepalive", g: agentTunnelFlags{on: true, port: 51820, mtu: 1500, keepalive: 10 * time.Second}, mesh: true, want: "invalid AddrPort", wantPort: 51820, wantKA: 10 * time.Second},
		{name: "keepalive off", g: agentTunnelFlags{on: true, port: 51820, mtu: 1500}, mesh: true, want: "invalid AddrPort", wantPort: 51820, wantKA: -1},
		{name: "per-path tunnels (default)", g: agentTunnelFlags{on: true, port: 51820, mtu: 1500, keepalive: 25 * time.Second, pathTunnels: true}, mesh: true, want: "invalid AddrPort", wantPort: 51820, wantKA: 25 * time.Second, pathsOn: true},
		{name: "negative keepalive", g: agentTunnelFlags{on: true, port: 51820, mtu: 1500, keepalive: -time.Second}, mesh: true, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var o agent.Options
			if tc.mesh {
				o.Mesh = &agent.MeshOptions{}
			}
			err := tc.g.apply(&o)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if tc.want == "-" {
				if o.Tunnel != nil {
					t.Fatalf("tunnel options %+v, want none", o.Tunnel)
				}
				return
			}
			if o.Tunnel == nil || o.Tunnel.Endpoint.String() != tc.want || o.Tunnel.ListenPort != tc.wantPort || o.Tunnel.Keepalive != tc.wantKA {
				t.Fatalf("tunnel options %+v, want endpoint %s port %d", o.Tunnel, tc.want, tc.wantPort)
			}
			if o.Tunnel.NoPathTunnels == tc.pathsOn {
				t.Fatalf("NoPathTunnels %v, want %v", o.Tunnel.NoPathTunnels, !tc.pathsOn)
			}
		})
	}
	// Per-path tunnels are the default.
	var g agentTunnelFlags
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	g.register(fs)
	if err := fs.Parse(nil); err != nil || !g.pathTunnels {
		t.Fatalf("--path-tunnels default %v (%v), want true", g.pathTunnels, err)
	}
	if err := fs.Parse([]string{"--path-tunnels=false"}); err != nil || g.pathTunnels {
		t.Fatalf("--path-tunnels=false gave %v (%v)", g.pathTunnels, err)
	}
}

package agent

import (
	"net/netip"
	"testing"
)

func TestTunnelEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name    string
		o       TunnelOptions
		m       MeshOptions
		want    string
		wantErr bool
	}{
		{name: "configured", o: TunnelOptions{Endpoint: netip.MustParseAddrPort("192.0.2.7:4000")}, m: MeshOptions{AdvertiseAddr: "10.0.0.1"}, want: "192.0.2.7:4000"},
		{name: "advertise address", m: MeshOptions{AdvertiseAddr: "10.0.0.1", BindAddr: "10.0.0.2"}, want: "10.0.0.1:51820"},
		{name: "bind address", m: MeshOptions{BindAddr: "10.0.0.2"}, want: "10.0.0.2:51820"},
		{name: "unspecified bind, no node", m: MeshOptions{BindAddr: "0.0.0.0"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tunnelEndpoint(&tc.o, &tc.m, nil, 51820)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && got.String() != tc.want {
				t.Fatalf("endpoint %s, want %s", got, tc.want)
			}
		})
	}
}

// Before the dataplane runs (or when it is off) the tunnel paths answer 503 and the
// status lists no tunnels (an empty list, not null).
func TestTunnelHandlersNotRunning(t *testing.T) {
	a := &agent{opts: Options{}}
	if hs := a.tunnelHandlers(); hs != nil {
		t.Fatalf("handlers without Tunnel options: %v", hs)
	}
	a.opts.Mesh, a.opts.Tunnel = &MeshOptions{}, &TunnelOptions{}
	if hs := a.tunnelHandlers(); len(hs) != 2 {
		t.Fatalf("%d handlers, want 2", len(hs))
	}
	if ts := a.tunnelsStatus(); ts == nil || len(ts) != 0 {
		t.Fatalf("tunnels %#v, want an empty list", ts)
	}
}

package agent

import (
	"context"
	kfake "github.com/patronus/patronus/kube/kclient/fake"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/patronus/patronus/kube"
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

func TestGatewayNode(t *testing.T) {
	node := func(name, addr string, marked bool, annotated bool) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}, Annotations: map[string]string{}}}
		if marked {
			n.Labels[GatewayLabel] = "true"
		}
		if annotated {
			n.Annotations[GatewayLabel] = "true"
		}
		if addr != "" {
			n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeExternalIP, Address: "192.0.2.99"}, {Type: corev1.NodeInternalIP, Address: addr}}
		}
		return n
	}
	for _, tc := range []struct {
		name     string
		nodes    []*corev1.Node
		wantName string
		wantAddr string
	}{
		{name: "the marked node", nodes: []*corev1.Node{node("a", "10.0.0.1", false, false), node("gw", "10.0.0.2", true, false)}, wantName: "gw", wantAddr: "10.0.0.2"},
		{name: "smallest name of several", nodes: []*corev1.Node{node("gw-b", "10.0.0.3", true, false), node("gw-a", "10.0.0.2", false, true)}, wantName: "gw-a", wantAddr: "10.0.0.2"},
		{name: "marked without IPv4 InternalIP skipped", nodes: []*corev1.Node{node("gw-a", "fd00::1", true, false), node("gw-b", "10.0.0.3", true, false)}, wantName: "gw-b", wantAddr: "10.0.0.3"},
		{name: "none marked", nodes: []*corev1.Node{node("a", "10.0.0.1", false, false)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset()
			for _, n := range tc.nodes {
				if _, err := cs.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			a := &agent{clients: &kube.Clients{Kube: kfake.Kube(cs)}}
			name, addr, err := a.gatewayNode(context.Background())
			if tc.wantName == "" {
				if err == nil {
					t.Fatalf("gateway %s %s, want an error", name, addr)
				}
				return
			}
			if err != nil || name != tc.wantName || addr.String() != tc.wantAddr {
				t.Fatalf("gateway %s %s %v, want %s %s", name, addr, err, tc.wantName, tc.wantAddr)
			}
		})
	}
}

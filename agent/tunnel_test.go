package agent

import (
	"context"
	"errors"
	kfake "github.com/patronus/patronus/kube/kclient/fake"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/patronus/patronus/dataplane/route"
	"github.com/patronus/patronus/kube"
	"github.com/patronus/patronus/nodenet"
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
	gwKey := wgPub(t)
	withKey := func(n *corev1.Node, k string) *corev1.Node {
		n.Annotations[nodenet.AnnotationWGKey] = k
		return n
	}
	for _, tc := range []struct {
		name     string
		nodes    []*corev1.Node
		wantName string
		wantAddr string
		wantKey  wgtypes.Key
	}{
		{name: "the marked node", nodes: []*corev1.Node{node("a", "10.0.0.1", false, false), node("gw", "10.0.0.2", true, false)}, wantName: "gw", wantAddr: "10.0.0.2"},
		{name: "smallest name of several", nodes: []*corev1.Node{node("gw-b", "10.0.0.3", true, false), node("gw-a", "10.0.0.2", false, true)}, wantName: "gw-a", wantAddr: "10.0.0.2"},
		{name: "marked without IPv4 InternalIP skipped", nodes: []*corev1.Node{node("gw-a", "fd00::1", true, false), node("gw-b", "10.0.0.3", true, false)}, wantName: "gw-b", wantAddr: "10.0.0.3"},
		{name: "none marked", nodes: []*corev1.Node{node("a", "10.0.0.1", false, false)}},
		{name: "published node key", nodes: []*corev1.Node{withKey(node("gw", "10.0.0.2", true, false), gwKey.String()), withKey(node("a", "10.0.0.1", false, false), wgPub(t).String())},
			wantName: "gw", wantAddr: "10.0.0.2", wantKey: gwKey},
		{name: "garbage key is none", nodes: []*corev1.Node{withKey(node("gw", "10.0.0.2", true, false), "not-a-key")}, wantName: "gw", wantAddr: "10.0.0.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset()
			for _, n := range tc.nodes {
				if _, err := cs.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			a := &agent{clients: &kube.Clients{Kube: kfake.Kube(cs)}}
			g, err := a.gatewayNode(context.Background())
			if tc.wantName == "" {
				if err == nil {
					t.Fatalf("gateway %s %s, want an error", g.name, g.addr)
				}
				return
			}
			if err != nil || g.name != tc.wantName || g.addr.String() != tc.wantAddr || g.key != tc.wantKey {
				t.Fatalf("gateway %s %s key %s %v, want %s %s key %s", g.name, g.addr, g.key, err, tc.wantName, tc.wantAddr, tc.wantKey)
			}
		})
	}
}

func wgPub(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

// The non-gateway node's routes to remote clusters: the CIDRs the gateway's ptw0 peer
// carries go over ptw0 (no next hop), the others keep the plain route; the message says
// which, and why some are in the clear.
func TestNonGatewayEncryptedLeg(t *testing.T) {
	b, c := netip.MustParsePrefix("10.248.0.0/16"), netip.MustParsePrefix("10.250.0.0/16")
	gw := gatewayRef{name: "gw-1", addr: netip.MustParseAddr("192.168.77.1")}
	plain := []route.Route{{Dst: b, Dev: "eth0", Via: gw.addr}, {Dst: c, Dev: "eth0", Via: gw.addr}}
	for _, tc := range []struct {
		name      string
		leg       nodenet.RemoteLeg
		err       error
		want      []route.Route
		msgHas    []string
		msgHasNot []string
	}{
		{name: "encryption off", want: plain, msgHas: []string{"via gateway gw-1 (192.168.77.1 dev eth0)"}, msgHasNot: []string{"encrypt", "clear"}},
		{name: "all encrypted", leg: nodenet.RemoteLeg{Encrypted: []netip.Prefix{b, c}},
			want:   []route.Route{{Dst: b, Dev: nodenet.WGDevice}, {Dst: c, Dev: nodenet.WGDevice}},
			msgHas: []string{"to gateway gw-1 (192.168.77.1) over the node WireGuard device ptw0 (encrypted)"}, msgHasNot: []string{"clear"}},
		{name: "one in the clear", leg: nodenet.RemoteLeg{Encrypted: []netip.Prefix{b}, Plain: []netip.Prefix{c}, Reason: nodenet.LegNotAllowed},
			want:   []route.Route{{Dst: b, Dev: nodenet.WGDevice}, plain[1]},
			msgHas: []string{"via gateway gw-1", "node encryption is on but 10.250.0.0/16 in the clear: " + nodenet.LegNotAllowed}},
		{name: "gateway without key", leg: nodenet.RemoteLeg{Plain: []netip.Prefix{b, c}, Reason: nodenet.LegNoGatewayKey},
			want: plain, msgHas: []string{"10.248.0.0/16, 10.250.0.0/16 in the clear: " + nodenet.LegNoGatewayKey}},
		{name: "strict, gateway without key", leg: nodenet.RemoteLeg{Plain: []netip.Prefix{b, c}, Reason: nodenet.LegNoGatewayKey, Strict: true},
			want: plain, msgHas: []string{"10.248.0.0/16, 10.250.0.0/16 DROPPED by strict node encryption (not sent in the clear): " + nodenet.LegNoGatewayKey},
			msgHasNot: []string{" in the clear:"}},
		{name: "routing failed", err: errors.New("no route to the gateway"), want: plain, msgHas: []string{"failed: no route to the gateway"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := overWireGuard(plain, tc.leg.Encrypted)
			if !slices.Equal(got, tc.want) {
				t.Errorf("routes %v, want %v", got, tc.want)
			}
			msg := nonGatewayMessage(gw, "eth0", tc.leg, tc.err)
			for _, s := range tc.msgHas {
				if !strings.Contains(msg, s) {
					t.Errorf("message %q lacks %q", msg, s)
				}
			}
			for _, s := range tc.msgHasNot {
				if strings.Contains(msg, s) {
					t.Errorf("message %q has %q", msg, s)
				}
			}
		})
	}
	if plain[0].Dev != "eth0" {
		t.Fatal("overWireGuard changed its input")
	}
	// No nodenet controller (no --manage-conflist): no node encryption, routes unchanged.
	a := &agent{}
	if got, leg := a.encryptedLeg(gw, plain); !slices.Equal(got, plain) || leg.String() != "" || len(leg.Encrypted) != 0 {
		t.Fatalf("without nodenet: %v %+v", got, leg)
	}
}

package tunnel

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/mesh/announce"
)

// The lab's remote-clusters entry: the primary endpoint is the gateway's node address
// (announced), the second path its address on WAN link 2 (only in the ConfigMap).
var labB = config.RemoteCluster{ID: "lab-c2", Endpoint: "10.77.2.11:51820", Paths: []string{"10.78.2.34:51820", "bad-entry"}}

func TestPathEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name string
		rc   config.RemoteCluster
		path string
		want string // "" = none
	}{
		{"primary path", labB, "lab-c2/10.77.2.11", "10.77.2.11:51820"},
		{"second path", labB, "lab-c2/10.78.2.34", "10.78.2.34:51820"},
		{"another cluster's path id", labB, "lab-c3/10.78.2.34", ""},
		{"unknown host", labB, "lab-c2/10.78.9.9", ""},
		{"empty host", labB, "lab-c2/", ""},
		{"host name, not an address", config.RemoteCluster{ID: "b", Endpoint: "gw.example:51820"}, "b/gw.example", ""},
		{"port other than 51820 kept", config.RemoteCluster{ID: "b", Endpoint: "192.0.2.1:51820", Paths: []string{"198.51.100.1:4500"}}, "b/198.51.100.1", "198.51.100.1:4500"},
		{"IPv6", config.RemoteCluster{ID: "b", Endpoint: "[2001:db8::1]:51820"}, "b/2001:db8::1", "[2001:db8::1]:51820"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := PathEndpoint(tc.rc, tc.path)
			if tc.want == "" {
				if ok {
					t.Fatalf("PathEndpoint = %v, want none", got)
				}
				return
			}
			if !ok || got != netip.MustParseAddrPort(tc.want) {
				t.Fatalf("PathEndpoint = %v, %v; want %s", got, ok, tc.want)
			}
		})
	}
}

func TestPathEndpoints(t *testing.T) {
	c3 := config.RemoteCluster{ID: "lab-c3", Endpoint: "10.77.3.11:51820", Paths: []string{"10.78.4.50:51820"}}
	rcs := []config.RemoteCluster{labB, c3}
	for _, tc := range []struct {
		name     string
		selected map[string]string
		want     map[string]string
	}{
		{"no selections: announced endpoints", nil, map[string]string{}},
		{"primary paths selected: announced endpoints", map[string]string{"lab-c2": "lab-c2/10.77.2.11", "lab-c3": "lab-c3/10.77.3.11"}, map[string]string{}},
		{"second path of one cluster", map[string]string{"lab-c2": "lab-c2/10.78.2.34", "lab-c3": "lab-c3/10.77.3.11"},
			map[string]string{"lab-c2": "10.78.2.34:51820"}},
		{"second paths of both", map[string]string{"lab-c2": "lab-c2/10.78.2.34", "lab-c3": "lab-c3/10.78.4.50"},
			map[string]string{"lab-c2": "10.78.2.34:51820", "lab-c3": "10.78.4.50:51820"}},
		{"selection of an unconfigured cluster ignored", map[string]string{"lab-c9": "lab-c9/10.0.0.1"}, map[string]string{}},
		{"path not in the configuration ignored", map[string]string{"lab-c2": "lab-c2/10.78.8.8"}, map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := PathEndpoints(rcs, tc.selected)
			if len(got) != len(tc.want) {
				t.Fatalf("PathEndpoints = %v, want %v", got, tc.want)
			}
			for c, w := range tc.want {
				if got[c] != netip.MustParseAddrPort(w) {
					t.Fatalf("PathEndpoints = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestComputeFollowsPathEndpoint(t *testing.T) {
	kb := pub(t)
	gwB := Gateway{Cluster: "b", Node: "b-gw", PublicKey: kb, Endpoints: ep("192.0.2.2:51820"), PodCIDRs: pfx("10.248.0.0/16")}
	for _, tc := range []struct {
		name string
		eps  map[string]netip.AddrPort
		want string
	}{
		{"none: first announced endpoint", nil, "192.0.2.2:51820"},
		{"path endpoint of the cluster", map[string]netip.AddrPort{"b": netip.MustParseAddrPort("198.51.100.2:51820")}, "198.51.100.2:51820"},
		{"another cluster's path endpoint does not apply", map[string]netip.AddrPort{"c": netip.MustParseAddrPort("198.51.100.2:51820")}, "192.0.2.2:51820"},
		{"invalid endpoint ignored", map[string]netip.AddrPort{"b": {}}, "192.0.2.2:51820"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Compute(Input{LocalCluster: "a", Gateway: true, Device: "wg-a", Gateways: []Gateway{gwB}, PathEndpoints: tc.eps})
			want := netip.MustParseAddrPort(tc.want)
			if len(p.Peers) != 1 || p.Peers[0].Endpoint != want || p.Peers[0].PublicKey != kb || len(p.Tunnels) != 1 || p.Tunnels[0].Endpoint != want {
				t.Fatalf("plan %+v, want peer %s at %s", p, kb, want)
			}
			if len(p.Peers[0].AllowedIPs) != 1 || p.Peers[0].AllowedIPs[0] != netip.MustParsePrefix("10.248.0.0/16") {
				t.Fatalf("allowed IPs %v: the path endpoint must not change them", p.Peers[0].AllowedIPs)
			}
		})
	}
}

// staticState is a mesh state that never changes.
type staticState []announce.Announcement

func (s staticState) List() []announce.Announcement { return s }
func (s staticState) Version() uint64               { return 1 }

// A change of path endpoints is applied at once by Run (not at the next mesh change or
// resync), writes only that peer's endpoint, and the same endpoints again write nothing.
func TestRunFollowsPathEndpoints(t *testing.T) {
	var log []string
	dev := &fakeDevice{log: &log}
	r := NewReconciler(ReconcilerOptions{Device: dev, Routes: &fakeRoutes{}})
	kb := pub(t)
	state := staticState{Announcement(kb, ep("192.0.2.2:51820"), pfx("10.248.0.0/16"))}
	state[0].Cluster, state[0].Origin = "b", "b-gw"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		// A poll and resync far longer than the test: only the kick can trigger.
		_ = r.Run(ctx, state, func() Input { return Input{LocalCluster: "a", Gateway: true} }, time.Hour, time.Hour)
	}()
	defer func() { cancel(); <-done }()
	endpoint := func() string {
		st, _ := dev.State()
		if len(st.Peers) != 1 || st.Peers[0].Endpoint == nil {
			return ""
		}
		return st.Peers[0].Endpoint.String()
	}
	wait := func(want string, applies uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for endpoint() != want || dev.Applies() != applies {
			if time.Now().After(deadline) {
				t.Fatalf("endpoint %q after %d applies, want %q after %d", endpoint(), dev.Applies(), want, applies)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait("192.0.2.2:51820", 1)
	alt := map[string]netip.AddrPort{"b": netip.MustParseAddrPort("198.51.100.2:51820")}
	if !r.SetPathEndpoints(alt) {
		t.Fatal("SetPathEndpoints reported no change")
	}
	wait("198.51.100.2:51820", 2)
	if r.SetPathEndpoints(map[string]netip.AddrPort{"b": netip.MustParseAddrPort("198.51.100.2:51820")}) {
		t.Fatal("the same endpoints reported as a change")
	}
	if st := r.Status(); len(st.Tunnels) != 1 || st.Tunnels[0].Endpoint != alt["b"] {
		t.Fatalf("status tunnels %+v", st.Tunnels)
	}
	// Back to the primary path: no path endpoints, the announced one again.
	if !r.SetPathEndpoints(nil) {
		t.Fatal("clearing the endpoints reported no change")
	}
	wait("192.0.2.2:51820", 3)
	time.Sleep(50 * time.Millisecond)
	if dev.Applies() != 3 {
		t.Fatalf("%d applies: something was written without a change", dev.Applies())
	}
}

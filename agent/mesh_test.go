package agent

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/patronus/patronus/config"
)

func TestMeshConfig(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       config.Config
		wantLocal []string
		wantPods  []string
		wantRole  string
		o         MeshOptions
	}{
		{"both CIDRs", config.Config{ClusterID: "east", ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), ServiceCIDR: netip.MustParsePrefix("10.96.0.0/12"),
			MulticastGroup: netip.MustParseAddrPort("239.1.2.3:7000")}, []string{"10.244.0.0/16", "10.96.0.0/12"}, []string{"10.244.0.0/16"}, "gateway", MeshOptions{}},
		{"no CIDRs configured", config.Config{ClusterID: "east"}, nil, nil, "edge", MeshOptions{Role: "edge"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mo, local := meshConfig(&tc.cfg, &tc.o, "n1", "v1")
			str := func(ps []netip.Prefix) []string {
				var out []string
				for _, p := range ps {
					out = append(out, p.String())
				}
				return out
			}
			if !slices.Equal(str(local), tc.wantLocal) || !slices.Equal(str(mo.Prefixes), tc.wantLocal) {
				t.Errorf("local %v, announced %v, want %v", local, mo.Prefixes, tc.wantLocal)
			}
			if !slices.Equal(str(mo.Tags.PodCIDRs), tc.wantPods) || mo.Tags.Role != tc.wantRole || mo.Tags.Version != "v1" {
				t.Errorf("tags %+v", mo.Tags)
			}
			if mo.NodeName != "n1" || mo.ClusterID != "east" || mo.BeaconGroup != tc.cfg.MulticastGroup {
				t.Errorf("options %+v", mo)
			}
		})
	}
}

func TestTrackingRegistererUnregisters(t *testing.T) {
	reg := prometheus.NewRegistry()
	for range 2 { // a second run in the same process registers again
		tr := &trackingRegisterer{r: reg}
		tr.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "x"}))
		if err := tr.Register(prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "x"})); err == nil {
			t.Fatal("duplicate accepted")
		}
		tr.unregisterAll()
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("left behind: %v", mfs)
	}
}

func TestMeshAndPathsHandlersBeforeStart(t *testing.T) {
	a := &agent{opts: Options{Mesh: &MeshOptions{}, Paths: &PathsOptions{}}.withDefaults(), seen: newSeenSets()}
	a.notReady.Store("starting")
	mux, err := a.apiMux()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/v1/members", "/v1/events", "/v1/mesh", "/v1/paths"} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		if rec.Code != http.StatusServiceUnavailable {
			t.Errorf("GET %s before the mesh runs: %d, want 503", p, rec.Code)
		}
	}
	// Off: not mounted at all.
	a.opts.Mesh, a.opts.Paths = nil, nil
	mux, _ = a.apiMux()
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/members", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("mesh off: GET /v1/members %d, want 404", rec.Code)
	}
}

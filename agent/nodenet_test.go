package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/patronus/patronus/manifests"
)

func TestBaseConfList(t *testing.T) {
	installed := `{"cniVersion":"1.0.0","name":"patronus-k8s","plugins":[{"type":"patronus-cni","bridge":"br9","mtu":1400,` +
		`"ipam":{"type":"host-local","subnet":"10.244.7.0/24"},"sdwan":{"cluster_id":"old"}},{"type":"portmap"}]}`
	for _, tc := range []struct {
		name      string
		file      string // "" = no conflist installed
		clusterID string
		wantID    string
		wantMTU   bool // the installed file's own field kept
	}{
		{name: "none installed: embedded default", clusterID: "c1", wantID: "c1"},
		{name: "none installed, no id: embedded as is", clusterID: "", wantID: "prod-us-west"},
		{name: "installed: kept, id set", file: installed, clusterID: "c2", wantID: "c2", wantMTU: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), manifests.ConfListName)
			if tc.file != "" {
				os.WriteFile(path, []byte(tc.file), 0o644)
			}
			b, err := baseConfList(path, tc.clusterID)
			if err != nil {
				t.Fatal(err)
			}
			var doc struct {
				Plugins []map[string]any `json:"plugins"`
			}
			if err := json.Unmarshal(b, &doc); err != nil {
				t.Fatalf("%v: %s", err, b)
			}
			p := doc.Plugins[0]
			if id := p["sdwan"].(map[string]any)["cluster_id"]; id != tc.wantID {
				t.Errorf("cluster_id %v, want %s", id, tc.wantID)
			}
			if _, ok := p["mtu"]; ok != tc.wantMTU {
				t.Errorf("mtu present %v, want %v: %s", ok, tc.wantMTU, b)
			}
			if tc.file != "" && len(doc.Plugins) != 2 {
				t.Errorf("other plugins dropped: %s", b)
			}
		})
	}
	// An unreadable conflist (a directory) is an error, not the default.
	dir := t.TempDir()
	if _, err := baseConfList(dir, "c"); err == nil {
		t.Fatal("a directory as conflist was accepted")
	}
}

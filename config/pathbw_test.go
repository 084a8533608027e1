package config

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestLoadPathBandwidth(t *testing.T) {
	const remotes = "- {id: c2, endpoint: '192.0.2.2:51820', cidr: 10.82.0.0/16, paths: ['198.51.100.2:51820', 'gw.example:51820']}\n"
	for _, tc := range []struct {
		name    string
		bw      string // "" = key absent
		want    map[string]uint64
		wantErr string // substring, with the key
	}{
		{name: "absent"},
		{name: "flow map", bw: "{c2/192.0.2.2: 100, c2/198.51.100.2: 1000}", want: map[string]uint64{"c2/192.0.2.2": 100, "c2/198.51.100.2": 1000}},
		{name: "block map, DNS host", bw: "c2/gw.example: 50\n", want: map[string]uint64{"c2/gw.example": 50}},
		{name: "empty map", bw: "{}"},
		{name: "unknown path", bw: "{c2/203.0.113.9: 10}",
			wantErr: `key path-bandwidth[c2/203.0.113.9]: "c2/203.0.113.9" is not a path of remote-clusters: the paths are c2/192.0.2.2, c2/198.51.100.2, c2/gw.example`},
		{name: "fraction", bw: "{c2/192.0.2.2: 1.5}", wantErr: "key path-bandwidth[c2/192.0.2.2]: 1.5: want a whole number of Mbit/s"},
		{name: "zero", bw: "{c2/192.0.2.2: 0}", wantErr: "key path-bandwidth[c2/192.0.2.2]: 0: want a whole number"},
		{name: "too much", bw: "{c2/192.0.2.2: 2000000}", wantErr: "key path-bandwidth[c2/192.0.2.2]"},
		{name: "string", bw: "{c2/192.0.2.2: fast}", wantErr: "key path-bandwidth[c2/192.0.2.2]: fast: want a whole number"},
		{name: "not a map", bw: "[100, 1000]", wantErr: "key path-bandwidth: not a YAML map of path id to Mbit/s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cm := map[string]string{KeyRemoteClusters: remotes}
			if tc.bw != "" {
				cm[KeyPathBandwidth] = tc.bw
			}
			cfg, err := Load(Input{NodeName: "n", ClusterIDEnv: "c1", ConfigMap: cm})
			if tc.wantErr != "" {
				var ce *Error
				if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a configuration error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(cfg.PathBandwidth, tc.want) {
				t.Fatalf("PathBandwidth = %v, want %v", cfg.PathBandwidth, tc.want)
			}
			if slices.ContainsFunc(cfg.Warnings, func(w string) bool { return strings.Contains(w, KeyPathBandwidth) }) {
				t.Fatalf("path-bandwidth reported as unknown: %v", cfg.Warnings)
			}
		})
	}
	// Without remote clusters there is no path to name.
	_, err := Load(Input{NodeName: "n", ClusterIDEnv: "c1", ConfigMap: map[string]string{KeyPathBandwidth: "{c2/192.0.2.2: 1}"}})
	if err == nil || !strings.Contains(err.Error(), "the paths are none") {
		t.Fatalf("err = %v", err)
	}
}

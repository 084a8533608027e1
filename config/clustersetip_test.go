package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestLoadClusterSetIPRange(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cm       map[string]string // nil: no ConfigMap
		want     string            // "" : the zero prefix (MCS imports off)
		wantWarn string            // a warning containing this
		wantErr  string
	}{
		{name: "no ConfigMap", cm: nil, want: DefaultClusterSetIPRange},
		{name: "key absent", cm: map[string]string{KeyClusterCIDR: "10.244.0.0/16", KeyServiceCIDR: "10.96.0.0/12"}, want: "10.112.0.0/16"},
		{name: "set", cm: map[string]string{KeyClusterSetIPRange: " 172.30.0.0/24\n"}, want: "172.30.0.0/24"},
		{name: "not a CIDR", cm: map[string]string{KeyClusterSetIPRange: "10.112.0.0"}, wantErr: "key clusterset-ip-range"},
		{name: "host bits", cm: map[string]string{KeyClusterSetIPRange: "10.112.0.1/16"}, wantErr: "host bits"},
		{name: "IPv6", cm: map[string]string{KeyClusterSetIPRange: "fd00:112::/64"}, wantErr: "IPv4"},
		{name: "too small", cm: map[string]string{KeyClusterSetIPRange: "10.112.0.0/31"}, wantErr: "/30 or shorter"},
		{name: "overlaps cluster-cidr", cm: map[string]string{KeyClusterCIDR: "10.0.0.0/8", KeyClusterSetIPRange: "10.112.0.0/16"},
			wantErr: "overlaps cluster-cidr 10.0.0.0/8"},
		{name: "overlaps service-cidr", cm: map[string]string{KeyServiceCIDR: "10.112.5.0/24", KeyClusterSetIPRange: "10.112.0.0/16"},
			wantErr: "overlaps service-cidr 10.112.5.0/24"},
		{name: "default overlaps: off with a warning", cm: map[string]string{KeyClusterCIDR: "10.0.0.0/8"},
			want: "", wantWarn: "Multi-Cluster Services imports are off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(Input{NodeName: "n", ClusterIDEnv: "c1", ConfigMap: tc.cm})
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
			var want netip.Prefix
			if tc.want != "" {
				want = netip.MustParsePrefix(tc.want)
			}
			if cfg.ClusterSetIPRange != want {
				t.Fatalf("ClusterSetIPRange = %v, want %v", cfg.ClusterSetIPRange, want)
			}
			warned := false
			for _, w := range cfg.Warnings {
				if strings.Contains(w, "unknown key") && strings.Contains(w, KeyClusterSetIPRange) {
					t.Errorf("clusterset-ip-range reported as unknown: %s", w)
				}
				if tc.wantWarn != "" && strings.Contains(w, tc.wantWarn) {
					warned = true
				}
			}
			if tc.wantWarn != "" && !warned {
				t.Errorf("warnings %q lack %q", cfg.Warnings, tc.wantWarn)
			}
		})
	}
}

package config

import (
	"errors"
	"strings"
	"testing"
)

func TestLoadNodeEncryption(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cm         map[string]string // nil: no ConfigMap
		env        string            // NODE_ENCRYPTION / --node-encryption
		want       string
		wantSource string
		wantErr    string // the key the error names
	}{
		{name: "default none", want: NodeEncryptionNone},
		{name: "ConfigMap wireguard", cm: map[string]string{KeyNodeEncryption: "wireguard"}, want: NodeEncryptionWireGuard,
			wantSource: "ConfigMap kube-system/patronus-config key node-encryption"},
		{name: "ConfigMap none, spaces", cm: map[string]string{KeyNodeEncryption: " none\n"}, want: NodeEncryptionNone},
		{name: "environment over ConfigMap", cm: map[string]string{KeyNodeEncryption: "none"}, env: "wireguard",
			want: NodeEncryptionWireGuard, wantSource: "environment NODE_ENCRYPTION"},
		{name: "environment none over ConfigMap wireguard", cm: map[string]string{KeyNodeEncryption: "wireguard"}, env: "none",
			want: NodeEncryptionNone},
		{name: "invalid ConfigMap", cm: map[string]string{KeyNodeEncryption: "ipsec"}, wantErr: "key node-encryption"},
		{name: "invalid ConfigMap even when overridden", cm: map[string]string{KeyNodeEncryption: "yes"}, env: "none", wantErr: "key node-encryption"},
		{name: "invalid environment", env: "WireGuard", wantErr: "environment key NODE_ENCRYPTION"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(Input{NodeName: "n", ClusterIDEnv: "c1", ConfigMap: tc.cm, NodeEncryptionEnv: tc.env})
			if tc.wantErr != "" {
				var ce *Error
				if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "accepted values are wireguard and none") {
					t.Fatalf("err = %v, want a configuration error naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.NodeEncryption != tc.want || (tc.wantSource != "" && cfg.NodeEncryptionSource != tc.wantSource) {
				t.Fatalf("NodeEncryption = %q from %q, want %q from %q", cfg.NodeEncryption, cfg.NodeEncryptionSource, tc.want, tc.wantSource)
			}
			for _, w := range cfg.Warnings {
				if strings.Contains(w, KeyNodeEncryption) {
					t.Errorf("node-encryption reported as unknown: %s", w)
				}
			}
		})
	}
}

package config

import (
	"errors"
	"strings"
	"testing"
)

func TestLoadNodeEncryptionStrict(t *testing.T) {
	wgCM := func(strict string) map[string]string {
		return map[string]string{KeyNodeEncryption: "wireguard", KeyNodeEncryptionStrict: strict}
	}
	for _, tc := range []struct {
		name       string
		cm         map[string]string
		encEnv     string // NODE_ENCRYPTION
		env        string // NODE_ENCRYPTION_STRICT
		want       bool
		wantSource string
		wantErr    string // in the error, which must be a configuration error
	}{
		{name: "default off"},
		{name: "default off with wireguard", cm: map[string]string{KeyNodeEncryption: "wireguard"}},
		{name: "ConfigMap true", cm: wgCM("true"), want: true, wantSource: "ConfigMap kube-system/patronus-config key node-encryption-strict"},
		{name: "ConfigMap false, spaces", cm: wgCM(" false\n")},
		{name: "environment over ConfigMap", cm: wgCM("false"), env: "true", want: true, wantSource: "environment key NODE_ENCRYPTION_STRICT"},
		{name: "environment false over ConfigMap true", cm: wgCM("true"), env: "false"},
		{name: "wireguard from the environment", env: "1", encEnv: "wireguard", want: true},
		{name: "invalid ConfigMap", cm: wgCM("yes"), wantErr: `key node-encryption-strict: "yes": accepted values are true and false`},
		{name: "invalid ConfigMap even when overridden", cm: wgCM("on"), env: "true", wantErr: "key node-encryption-strict"},
		{name: "invalid environment", cm: wgCM("true"), env: "strict", wantErr: "environment key NODE_ENCRYPTION_STRICT"},
		{name: "strict without encryption", cm: map[string]string{KeyNodeEncryptionStrict: "true"},
			wantErr: "key node-encryption-strict: true needs node-encryption wireguard, but it is none (from the default)"},
		{name: "strict with encryption turned off by the environment", cm: wgCM("true"), encEnv: "none",
			wantErr: "but it is none (from environment NODE_ENCRYPTION)"},
		{name: "strict false without encryption is fine", cm: map[string]string{KeyNodeEncryptionStrict: "false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(Input{NodeName: "n", ClusterIDEnv: "c1", ConfigMap: tc.cm, NodeEncryptionEnv: tc.encEnv, NodeEncryptionStrictEnv: tc.env})
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
			if cfg.NodeEncryptionStrict != tc.want || (tc.wantSource != "" && cfg.NodeEncryptionStrictSource != tc.wantSource) {
				t.Fatalf("strict %v from %q, want %v from %q", cfg.NodeEncryptionStrict, cfg.NodeEncryptionStrictSource, tc.want, tc.wantSource)
			}
			for _, w := range cfg.Warnings {
				if strings.Contains(w, KeyNodeEncryptionStrict) {
					t.Errorf("reported as unknown: %s", w)
				}
			}
		})
	}
}

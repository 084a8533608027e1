package config

import (
	"errors"
	"strings"
	"testing"
)

func TestLoadMasquerade(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cm      map[string]string // nil: no ConfigMap
		want    bool
		wantErr string
	}{
		{name: "no ConfigMap", cm: nil, want: true},
		{name: "key absent", cm: map[string]string{}, want: true},
		{name: "true", cm: map[string]string{KeyMasquerade: "true"}, want: true},
		{name: "false", cm: map[string]string{KeyMasquerade: "false"}, want: false},
		{name: "spaces", cm: map[string]string{KeyMasquerade: " false\n"}, want: false},
		{name: "invalid", cm: map[string]string{KeyMasquerade: "sometimes"}, wantErr: "key masquerade"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(Input{NodeName: "n", ClusterIDEnv: "c1", ConfigMap: tc.cm})
			if tc.wantErr != "" {
				var ce *Error
				if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a configuration error naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Masquerade != tc.want {
				t.Fatalf("Masquerade = %v, want %v", cfg.Masquerade, tc.want)
			}
			for _, w := range cfg.Warnings {
				if strings.Contains(w, KeyMasquerade) {
					t.Errorf("masquerade reported as unknown: %s", w)
				}
			}
		})
	}
}

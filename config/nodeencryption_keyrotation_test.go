package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestLoadNodeEncryptionKeyRotation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cm      map[string]string
		want    time.Duration
		wantErr bool
	}{
		{name: "default off"},
		{name: "off", cm: map[string]string{KeyNodeEncryptionKeyRotation: "off"}},
		{name: "zero", cm: map[string]string{KeyNodeEncryptionKeyRotation: " 0 "}},
		{name: "daily", cm: map[string]string{KeyNodeEncryptionKeyRotation: "24h"}, want: 24 * time.Hour},
		{name: "minimum", cm: map[string]string{KeyNodeEncryptionKeyRotation: "1m"}, want: time.Minute},
		{name: "too short", cm: map[string]string{KeyNodeEncryptionKeyRotation: "30s"}, wantErr: true},
		{name: "not a duration", cm: map[string]string{KeyNodeEncryptionKeyRotation: "daily"}, wantErr: true},
		{name: "negative", cm: map[string]string{KeyNodeEncryptionKeyRotation: "-1h"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(Input{NodeName: "n", ClusterIDEnv: "c1", ConfigMap: tc.cm})
			if tc.wantErr {
				var ce *Error
				if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), "key "+KeyNodeEncryptionKeyRotation) {
					t.Fatalf("err = %v, want a configuration error naming the key", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.NodeEncryptionKeyRotation != tc.want {
				t.Fatalf("NodeEncryptionKeyRotation = %v, want %v", cfg.NodeEncryptionKeyRotation, tc.want)
			}
			for _, w := range cfg.Warnings {
				if strings.Contains(w, KeyNodeEncryptionKeyRotation) {
					t.Errorf("reported as unknown: %s", w)
				}
			}
		})
	}
}

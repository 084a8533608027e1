package cli

import (
	"errors"
	"strings"
	"testing"
)

func TestNodeEncryptionTier(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flag    string
		changed bool
		env     string
		want    string
		wantErr string // part of the usage error
	}{
		{name: "neither: the ConfigMap decides"},
		{name: "flag", flag: "wireguard", changed: true, want: "wireguard"},
		{name: "flag none over env", flag: "none", changed: true, env: "wireguard", want: "none"},
		{name: "env", env: "wireguard", want: "wireguard"},
		{name: "bad flag", flag: "ipsec", changed: true, wantErr: `--node-encryption "ipsec": accepted values are wireguard and none`},
		{name: "empty flag", flag: "", changed: true, wantErr: "--node-encryption: accepted values"},
		{name: "bad env", env: "yes", wantErr: `$NODE_ENCRYPTION "yes": accepted values`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nodeEncryptionTier(tc.flag, tc.changed, func(k string) string {
				if k == "NODE_ENCRYPTION" {
					return tc.env
				}
				return ""
			})
			if tc.wantErr != "" {
				var ue usageError
				if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want a usage error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

package cli

import (
	"testing"

	"github.com/spf13/pflag"

	"github.com/patronus/patronus/agent"
)

func TestAgentPathDeviceFlag(t *testing.T) {
	tests := []struct {
		args    []string
		want    map[string]string
		wantErr bool
	}{
		{args: nil, want: nil},
		{args: []string{"--path-device", "c2/10.0.0.1=wg-p1", "--path-device", "c2/10.0.0.2=wg-p2"},
			want: map[string]string{"c2/10.0.0.1": "wg-p1", "c2/10.0.0.2": "wg-p2"}},
		{args: []string{"--path-device", "c2/10.0.0.1"}, wantErr: true},
		{args: []string{"--path-device", "=wg-p1"}, wantErr: true},
		{args: []string{"--path-device", "p=wg-0123456789abcdef"}, wantErr: true},
	}
	for _, tc := range tests {
		var g agentGatewayFlags
		fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		g.register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		var o agent.Options
		err := g.apply(&o)
		if (err != nil) != tc.wantErr {
			t.Errorf("%v: err %v", tc.args, err)
			continue
		}
		if err != nil {
			continue
		}
		if len(o.Paths.Devices) != len(tc.want) {
			t.Errorf("%v: devices %v, want %v", tc.args, o.Paths.Devices, tc.want)
		}
		for k, v := range tc.want {
			if o.Paths.Devices[k] != v {
				t.Errorf("%v: %s → %q, want %q", tc.args, k, o.Paths.Devices[k], v)
			}
		}
	}
}

package cli

import (
	"testing"

	"github.com/patronus/patronus/localapi"
)

func TestMCSLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   localapi.MCS
		want string // "": no line
	}{
		{name: "no CRDs, MCS off", in: localapi.MCS{}},
		{name: "watching only", in: localapi.MCS{Available: true, ServiceExports: 2}, want: "MCS: 2 ServiceExports, 0 ServiceImports"},
		{name: "leader", in: localapi.MCS{Available: true, ServiceExports: 1, ServiceImports: 1, Leader: true,
			Controller: "controller running (clusterset range 10.112.0.0/16); datapath running"},
			want: "MCS: 1 ServiceExports, 1 ServiceImports, this agent leads; controller running (clusterset range 10.112.0.0/16); datapath running"},
		{name: "waiting for CRDs", in: localapi.MCS{Controller: "waiting for the MCS API (ServiceExport/ServiceImport CRDs)"},
			want: "MCS: 0 ServiceExports, 0 ServiceImports; waiting for the MCS API (ServiceExport/ServiceImport CRDs)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mcsLine(tc.in)
			if tc.want == "" {
				if len(got) != 0 {
					t.Fatalf("got %+v, want no line", got)
				}
				return
			}
			if len(got) != 1 || got[0].text != tc.want || !got[0].ok {
				t.Fatalf("got %+v, want one ok line %q", got, tc.want)
			}
		})
	}
}

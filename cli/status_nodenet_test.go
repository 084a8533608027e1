package cli

import (
	"strings"
	"testing"

	"github.com/patronus/patronus/localapi"
)

func TestNodeNetLines(t *testing.T) {
	for _, tc := range []struct {
		name   string
		n      *localapi.NodeNet
		err    string
		want   []string // substrings, one per line, in order
		failed int      // lines marked ✗
	}{
		{name: "off", n: nil},
		{name: "unreadable", err: "HTTP 503: not running", want: []string{"Pod block: HTTP 503"}, failed: 1},
		{name: "lease block", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "lease", ConfList: "/etc/cni/net.d/10-patronus.conflist", Peers: 2},
			want: []string{"Pod block: 10.244.3.0/24 (from lease), conflist /etc/cni/net.d/10-patronus.conflist, 2 peer nodes routed"}},
		{name: "single node", n: &localapi.NodeNet{}, want: []string{"Pod block: none"}},
		{name: "not written", n: &localapi.NodeNet{Block: "10.244.3.0/24", Source: "node"}, want: []string{"conflist not written yet"}, failed: 1},
		{name: "lost pods and error", n: &localapi.NodeNet{Block: "10.244.4.0/24", Source: "lease", ConfList: "/c", LastError: "boom",
			Lost: []localapi.NodeNetLost{{Namespace: "default", Name: "web", IPs: []string{"10.244.3.7/24"}, Block: "10.244.3.0/24"}}},
			want: []string{"Pod block: 10.244.4.0/24", "Pod network: boom", "Pod default/web holds 10.244.3.7/24 of lost pod block 10.244.3.0/24"}, failed: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := nodeNetLines(tc.n, tc.err)
			if len(got) != len(tc.want) {
				t.Fatalf("%d lines, want %d: %+v", len(got), len(tc.want), got)
			}
			failed := 0
			for i, l := range got {
				if !strings.Contains(l.text, tc.want[i]) {
					t.Errorf("line %d %q lacks %q", i, l.text, tc.want[i])
				}
				if !l.ok {
					failed++
				}
			}
			if failed != tc.failed {
				t.Errorf("%d failed lines, want %d: %+v", failed, tc.failed, got)
			}
		})
	}
}

package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/patronus/patronus/localapi"
)

// An edge node's status: its own line, lost pod blocks first, then the pod block (from
// gossip), its claim, one line per route, and the mesh; no agent-only lines.
func TestEdgeStatusLines(t *testing.T) {
	live := func(ready bool) *localapi.Status {
		s := &localapi.Status{Mode: localapi.ModeEdge, Node: "e1", ClusterID: "edge", Ready: ready,
			Mesh: &localapi.Mesh{Running: true, Members: 2, Alive: 2, Announcements: 2}}
		if !ready {
			s.NotReadyReason = "waiting for the node's pod block"
		}
		return s
	}
	claimed := time.Date(2026, 11, 27, 14, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		a      *AgentStatus
		want   []string // substrings, one per line, in order
		failed int
	}{
		{name: "block, route, mesh", a: &AgentStatus{Socket: "/s", Live: live(true), NodeNet: &localapi.NodeNet{Block: "10.247.1.0/24", Source: "gossip",
			ClaimedAt: claimed, ConfList: "/c", Peers: 1, Routes: []localapi.NodeNetRoute{{Dst: "10.247.2.0/24", Via: "192.168.78.22", Dev: "eth0"}}}},
			want: []string{"Edge node: ready, node e1 in cluster edge (patronus mesh run, /s)",
				"Pod block: 10.247.1.0/24 (from gossip), conflist /c, 1 peer nodes routed",
				"Pod block claim: 10.247.1.0/24 through the mesh at ",
				"Route: 10.247.2.0/24 via 192.168.78.22 dev eth0",
				"Mesh: 2 members (2 alive), 2 announcements accepted"}},
		{name: "lost pods first", a: &AgentStatus{Socket: "/s", Live: live(true), NodeNet: &localapi.NodeNet{Block: "10.247.3.0/24", Source: "gossip", ConfList: "/c",
			Routes: []localapi.NodeNetRoute{{Dst: "10.247.1.0/24", Via: "10.247.1.0", Dev: "ptx0", OnLink: true}},
			Lost: []localapi.NodeNetLost{{Namespace: "default", Name: "a", IPs: []string{"10.247.1.7/24"}, Block: "10.247.1.0/24"},
				{Namespace: "default", Name: "b", IPs: []string{"10.247.1.8/24"}, Block: "10.247.1.0/24"}}}},
			want: []string{"Edge node: ready", "Lost pod block 10.247.1.0/24: an older claim of another node won it; 2 pods on this node still hold addresses in it",
				"Pod block: 10.247.3.0/24 (from gossip)", "Pod default/a holds 10.247.1.7/24 of lost pod block 10.247.1.0/24",
				"Pod default/b holds 10.247.1.8/24", "Route: 10.247.1.0/24 via 10.247.1.0 dev ptx0 onlink", "Mesh: 2 members"}, failed: 3},
		{name: "not ready", a: &AgentStatus{Socket: "/s", Live: live(false), NodeNet: &localapi.NodeNet{}},
			want: []string{"Edge node: running but not ready: waiting for the node's pod block (/s)", "Pod block: none", "Mesh: "}, failed: 1},
		{name: "no pod network", a: &AgentStatus{Socket: "/s", Live: live(true)},
			want: []string{"Edge node: ready", "Pod network: off (patronus mesh run without --pod-network)", "Mesh: "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Status{CNI: CNIStatus{Plugin: PluginStatus{Installed: true, Path: "/p"}, Bridge: BridgeStatus{Name: "b", Present: true, Addresses: []string{"x"}},
				Database: DatabaseStatus{OK: true, Path: "/d"}}, Agent: tc.a}
			all := s.lines()
			for _, l := range all {
				if strings.HasPrefix(l.text, "Active tunnels") || strings.HasPrefix(l.text, "NetworkPolicies") || strings.HasPrefix(l.text, "Agent:") {
					t.Errorf("agent-only line on an edge node: %q", l.text)
				}
			}
			got := tc.a.edgeLines()
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

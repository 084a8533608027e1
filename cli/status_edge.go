package cli

import (
	"fmt"
	"time"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/nodenet"
)

// isEdge: the socket answered as a mesh-only agent (`patronus mesh run`, edge mode).
func (a *AgentStatus) isEdge() bool {
	return a != nil && a.Live != nil && a.Live.Mode == localapi.ModeEdge
}

// edgeLines replace the agent's lines for an edge node: it has no Kubernetes parts
// (NetworkPolicies, MCS, tunnels), and its pod block is claimed through the mesh. Pods
// left on a block the node lost come first after the node's own line: they hold
// addresses another node now routes and must be recreated.
func (a *AgentStatus) edgeLines() []statusLine {
	s := a.Live
	var out []statusLine
	if s.Ready {
		out = append(out, statusLine{true, fmt.Sprintf("Edge node: ready, node %s in cluster %s (patronus mesh run, %s)", s.Node, s.ClusterID, a.Socket)})
	} else {
		out = append(out, statusLine{false, fmt.Sprintf("Edge node: running but not ready: %s (%s)", s.NotReadyReason, a.Socket)})
	}
	n := a.NodeNet
	if n == nil && a.NodeNetError == "" {
		out = append(out, statusLine{true, "Pod network: off (patronus mesh run without --pod-network)"})
		return append(out, meshLine(s.Mesh)...)
	}
	if n != nil && len(n.Lost) > 0 {
		byBlock := map[string]int{}
		var blocks []string
		for _, l := range n.Lost {
			if byBlock[l.Block] == 0 {
				blocks = append(blocks, l.Block)
			}
			byBlock[l.Block]++
		}
		for _, b := range blocks {
			out = append(out, statusLine{false, fmt.Sprintf("Lost pod block %s: an older claim of another node won it; %d pods on this node still hold addresses in it (recreate them)", b, byBlock[b])})
		}
	}
	out = append(out, nodeNetLines(n, a.NodeNetError)...)
	if n != nil && n.Source == nodenet.SourceGossip && !n.ClaimedAt.IsZero() {
		out = append(out, statusLine{true, fmt.Sprintf("Pod block claim: %s through the mesh at %s (the oldest claim wins a conflict)", n.Block, n.ClaimedAt.Local().Format(time.RFC3339))})
	}
	if n != nil {
		for _, r := range n.Routes {
			text := fmt.Sprintf("Route: %s via %s dev %s", r.Dst, r.Via, r.Dev)
			if r.OnLink {
				text += " onlink"
			}
			out = append(out, statusLine{true, text})
		}
	}
	return append(out, meshLine(s.Mesh)...)
}

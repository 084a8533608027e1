package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/store"
)

// AgentStatus is the agent's part of `patronus status`: live from its socket when it
// answers, else the snapshot it last left in the node database.
type AgentStatus struct {
	Socket   string             `json:"socket"`
	Running  bool               `json:"running"`
	Error    string             `json:"error,omitempty"`
	Live     *localapi.Status   `json:"live,omitempty"`
	LastSeen *localapi.Snapshot `json:"lastSeen,omitempty"`
	// MeshSaved is the mesh state the agent last saved (shown while it is down).
	MeshSaved *localapi.Mesh `json:"meshSaved,omitempty"`
	// NodeNet is the node's pod block (GET /v1/nodenet), nil when the agent does not
	// manage the conflist; NodeNetError says why it could not be read.
	NodeNet      *localapi.NodeNet `json:"nodeNet,omitempty"`
	NodeNetError string            `json:"nodeNetError,omitempty"`
}

// agentStatusTimeout bounds the socket query: status must answer even if the agent hangs.
const agentStatusTimeout = 3 * time.Second

// gatherAgentStatus asks the agent; when it answers and the user did not choose the
// database or bridge, the agent's own ones are shown (they may differ from the defaults).
func gatherAgentStatus(ctx context.Context, o *statusOptions) *AgentStatus {
	a := &AgentStatus{Socket: o.socket}
	c := localapi.NewClient(o.socket)
	defer c.Close()
	qctx, cancel := context.WithTimeout(ctx, agentStatusTimeout)
	defer cancel()
	s, err := c.Status(qctx)
	if err == nil {
		a.Running, a.Live = true, &s
		if !o.databaseSet && s.Database != "" {
			o.database = s.Database
		}
		if !o.bridgeSet && s.Bridge.Name != "" {
			o.bridge = s.Bridge.Name
		}
		switch nn, err := c.NodeNet(qctx); {
		case err == nil:
			a.NodeNet = &nn
		case !errors.Is(err, localapi.ErrNodeNetOff):
			a.NodeNetError = err.Error()
		}
		return a
	}
	a.Error = err.Error()
	if errors.Is(err, localapi.ErrNotRunning) {
		a.Error = "not running (no answer on " + o.socket + ")"
	}
	a.LastSeen = readSnapshot(ctx, o.database)
	a.MeshSaved = readMeshState(ctx, o.database)
	return a
}

// readSnapshot reads the agent's last summary without creating the database.
func readSnapshot(ctx context.Context, path string) *localapi.Snapshot {
	if _, err := os.Stat(path); err != nil {
		return nil
	}
	db, err := store.Open(ctx, path)
	if err != nil {
		return nil
	}
	defer db.Close()
	v, ok, err := db.Get(ctx, localapi.SnapshotKey)
	if err != nil || !ok {
		return nil
	}
	var s localapi.Snapshot
	if json.Unmarshal([]byte(v), &s) != nil {
		return nil
	}
	return &s
}

// tunnelLines is the seed's "Active tunnels" line (between database and pods).
func (a *AgentStatus) tunnelLines() []statusLine {
	switch {
	case a == nil:
		return nil
	case a.Live != nil:
		return []statusLine{tunnelLine(a.Live.Tunnels, "")}
	case a.LastSeen != nil:
		return []statusLine{tunnelLine(a.LastSeen.Tunnels, lastSeenSuffix(a.LastSeen))}
	}
	return nil
}

func tunnelLine(ts []localapi.Tunnel, suffix string) statusLine {
	var up, down []string
	for _, t := range ts {
		if t.Up {
			up = append(up, t.Cluster)
		} else {
			down = append(down, t.Cluster)
		}
	}
	text := fmt.Sprintf("Active tunnels: %d", len(up))
	if len(up) > 0 {
		text += " (" + strings.Join(up, ", ") + ")"
	}
	if len(down) > 0 {
		text += "; down: " + strings.Join(down, ", ")
	}
	return statusLine{len(down) == 0, text + suffix}
}

func lastSeenSuffix(s *localapi.Snapshot) string {
	return " (last seen by the agent at " + s.UpdatedAt.Local().Format(time.RFC3339) + ")"
}

// lines are the NetworkPolicies line and the agent's own line. With no agent answering
// and no snapshot (an agent never ran with this database), nothing is added: a node that
// only has the plugin shows the plugin's lines.
func (a *AgentStatus) lines() []statusLine {
	switch {
	case a == nil:
		return nil
	case a.Live != nil:
		s := a.Live
		out := []statusLine{{true, fmt.Sprintf("NetworkPolicies: %d", s.NetworkPolicies)}}
		if s.ConfigWarning != "" {
			out = append(out, statusLine{false, "Configuration: " + s.ConfigWarning})
		}
		if s.Ready {
			out = append(out, statusLine{true, fmt.Sprintf("Agent: ready, node %s in cluster %s (%s)", s.Node, s.ClusterID, a.Socket)})
		} else {
			out = append(out, statusLine{false, fmt.Sprintf("Agent: running but not ready: %s (%s)", s.NotReadyReason, a.Socket)})
		}
		out = append(out, nodeNetLines(a.NodeNet, a.NodeNetError)...)
		return append(append(out, meshLine(s.Mesh)...), mcsLine(s.MCS)...)
	case a.LastSeen != nil:
		return append([]statusLine{
			{true, fmt.Sprintf("NetworkPolicies: %d", a.LastSeen.NetworkPolicies) + lastSeenSuffix(a.LastSeen)},
			{false, "Agent: " + a.Error + "; tunnels and NetworkPolicies above are from the database"},
		}, meshLine(a.MeshSaved)...)
	case a.MeshSaved != nil:
		return append([]statusLine{{false, "Agent: " + a.Error}}, meshLine(a.MeshSaved)...)
	}
	return nil
}

// nodeNetLines show the node's pod block and the pods left in a block it lost.
func nodeNetLines(n *localapi.NodeNet, errMsg string) []statusLine {
	if n == nil {
		if errMsg == "" {
			return nil
		}
		return []statusLine{{false, "Pod block: " + errMsg}}
	}
	var out []statusLine
	switch {
	case n.Block != "" && n.ConfList != "":
		vx := ""
		if n.VXLAN {
			vx = ", VXLAN"
		}
		out = append(out, statusLine{true, fmt.Sprintf("Pod block: %s (from %s), conflist %s, %d peer nodes routed%s", n.Block, n.Source, n.ConfList, n.Peers, vx)})
	case n.Block != "":
		out = append(out, statusLine{false, fmt.Sprintf("Pod block: %s (from %s), conflist not written yet", n.Block, n.Source)})
	case n.LastError == "":
		out = append(out, statusLine{true, "Pod block: none (no Node podCIDR, no cluster-cidr: the conflist's own range, single node)"})
	}
	if n.LastError != "" {
		out = append(out, statusLine{false, "Pod network: " + n.LastError})
	}
	for _, c := range n.Conflicts {
		out = append(out, statusLine{false, "Peer block not routed: " + c})
	}
	for _, l := range n.Lost {
		out = append(out, statusLine{false, fmt.Sprintf("Pod %s/%s holds %s of lost pod block %s (recreate it)", l.Namespace, l.Name, strings.Join(l.IPs, ", "), l.Block)})
	}
	return append(out, nodeEncryptionLines(n)...)
}

// nodeEncryptionLines: with node-to-node encryption on, the device and how many peer
// nodes are encrypted (✓), its error and every peer routed in the clear (✗).
func nodeEncryptionLines(n *localapi.NodeNet) []statusLine {
	if n.Encryption != "wireguard" {
		return nil
	}
	w := n.WireGuard
	strict := ""
	if n.Strict {
		strict = fmt.Sprintf("strict (%d packets dropped), ", n.StrictDropped)
	}
	if w == nil {
		return []statusLine{{false, "Node encryption: wireguard, " + strict + "no device yet"}}
	}
	if w.Error != "" {
		return []statusLine{{false, fmt.Sprintf("Node encryption: %sWireGuard device %s: %s", strict, w.Device, w.Error)}}
	}
	enc, oldest := 0, time.Time{}
	var out []statusLine
	for _, p := range n.PeerStates {
		switch {
		case !p.Encrypted && p.Dropped != "":
			out = append(out, statusLine{false, fmt.Sprintf("Peer node %s: %s", p.Node, p.Dropped)})
			continue
		case !p.Encrypted:
			out = append(out, statusLine{false, fmt.Sprintf("Peer node %s not encrypted: %s", p.Node, p.Reason)})
			continue
		}
		enc++
		if oldest.IsZero() || p.LastHandshake.Before(oldest) {
			oldest = p.LastHandshake
		}
	}
	hs := ""
	switch {
	case enc > 0 && oldest.IsZero():
		hs = "; a peer has had no handshake yet (no traffic)"
	case enc > 0:
		hs = "; oldest last handshake " + oldest.UTC().Format(time.RFC3339)
	}
	impl := w.Implementation
	if impl != "" {
		impl += ", "
	}
	head := statusLine{true, fmt.Sprintf("Node encryption: wireguard on %s (%sUDP %d, MTU %d), %s%d of %d peer nodes encrypted%s",
		w.Device, impl, w.Port, w.MTU, strict, enc, len(n.PeerStates), hs)}
	return append([]statusLine{head}, out...)
}

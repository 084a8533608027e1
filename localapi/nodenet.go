package localapi

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// PathNodeNet is the node's pod network status (package nodenet's Status), served while
// the agent manages the conflist (agent --manage-conflist).
const PathNodeNet = "/v1/nodenet"

// NodeNet is GET /v1/nodenet: the node's pod block and what nodenet did with it, the
// JSON of nodenet.Status mirrored with strings for prefixes and addresses (this package
// is linked by the CNI plugin, which must not link nodenet's Kubernetes and WireGuard
// dependencies).
type NodeNet struct {
	Block  string `json:"block"`  // "invalid Prefix" / "" until known
	Source string `json:"source"` // "node" (Node podCIDRs) | "lease" | "gossip" (edge mode) | "" (single-node default)
	// ClaimedAt is when the node got its block (the claim's seniority in edge mode).
	ClaimedAt time.Time      `json:"claimedAt,omitzero"`
	ConfList  string         `json:"conflist,omitempty"`
	Peers     int            `json:"peers"`
	Routes    []NodeNetRoute `json:"routes,omitempty"`
	VXLAN     bool           `json:"vxlan"`
	Conflicts []string       `json:"conflicts,omitempty"`
	Lost      []NodeNetLost  `json:"lostPods,omitempty"`
	LastError string         `json:"lastError,omitempty"`
	// Encryption is node-to-node encryption: "none" | "wireguard" ("" from older agents).
	Encryption string          `json:"encryption,omitempty"`
	WireGuard  *NodeNetWG      `json:"wireguard,omitempty"`
	PeerStates []NodeNetPeerWG `json:"peerStates,omitempty"`
	// Strict is strict node encryption in force; StrictDropped the packets it dropped.
	Strict        bool   `json:"strict,omitempty"`
	StrictDropped uint64 `json:"strictDropped,omitempty"`
}

// NodeNetWG is the node-to-node WireGuard device.
type NodeNetWG struct {
	Device         string `json:"device"`
	PublicKey      string `json:"publicKey"`
	Port           int    `json:"port"`
	MTU            int    `json:"mtu,omitempty"`
	Implementation string `json:"implementation,omitempty"`
	Peers          int    `json:"peers"`
	Error          string `json:"error,omitempty"`
}

// NodeNetPeerWG is one peer node under encryption: encrypted (with its last handshake) or
// why not.
type NodeNetPeerWG struct {
	Node          string    `json:"node"`
	Blocks        []string  `json:"blocks"`
	Encrypted     bool      `json:"encrypted"`
	PublicKey     string    `json:"publicKey,omitempty"`
	Endpoint      string    `json:"endpoint,omitempty"`
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	RxBytes       int64     `json:"rxBytes,omitempty"`
	TxBytes       int64     `json:"txBytes,omitempty"`
	Reason        string    `json:"reason,omitempty"`
	// Dropped: strict mode drops the pod traffic to this peer (why).
	Dropped string `json:"dropped,omitempty"`
}

// NodeNetRoute is a route to another node's pod block.
type NodeNetRoute struct {
	Dst    string `json:"dst"`
	Via    string `json:"via"`
	Dev    string `json:"dev"`
	OnLink bool   `json:"onlink,omitempty"`
}

// NodeNetLost is a pod still holding an address of a pod block this node lost.
type NodeNetLost struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	ContainerID string   `json:"containerID"`
	IPs         []string `json:"ips"`
	Block       string   `json:"block"`
}

// ErrNodeNetOff is what NodeNet returns when the agent does not manage the node's pod
// network (the path is not mounted).
var ErrNodeNetOff = errors.New("the agent does not manage the node's pod network (--manage-conflist off)")

// NodeNet asks GET /v1/nodenet.
func (c *Client) NodeNet(ctx context.Context) (NodeNet, error) {
	var n NodeNet
	err := c.Do(ctx, http.MethodGet, PathNodeNet, &n)
	var se *StatusError
	if errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusMethodNotAllowed) {
		return n, ErrNodeNetOff
	}
	return n, err
}

// Package localapi is the agent's local HTTP API over a unix socket: the JSON types it
// serves and a small client used by the CLI and the CNI plugin. It imports nothing from
// Kubernetes so that the CNI plugin, which runs once per pod ADD, stays cheap.
package localapi

import "time"

// DefaultSocket is where the agent listens (docs/CONTRACT.md).
const DefaultSocket = "/var/run/patronus/agent.sock"

// Paths the agent serves.
const (
	PathReadyz  = "/readyz" // 200 once the agent's caches are synced (the CNI STATUS check)
	PathHealthz = "/healthz"
	PathStatus  = "/v1/status"
	PathPods    = "/v1/pods"
)

// ModeEdge is Status.Mode of a mesh-only agent (`patronus mesh run`).
const ModeEdge = "edge"

// Status is GET /v1/status: what `patronus status` prints.
type Status struct {
	// Mode is "" for the agent and ModeEdge for a mesh-only agent (`patronus mesh run`,
	// edge mode: no API server), whose status has no Kubernetes parts.
	Mode      string    `json:"mode,omitempty"`
	Node      string    `json:"node"`
	ClusterID string    `json:"clusterID"`
	Version   string    `json:"version,omitempty"`
	StartedAt time.Time `json:"startedAt"`
	// Ready is true once the Kubernetes caches have synced; NotReadyReason says why not.
	Ready          bool   `json:"ready"`
	NotReadyReason string `json:"notReadyReason,omitempty"`
	// ConfigWarning is set when the ConfigMap changed (or became invalid) since the agent
	// started; the agent keeps running with the configuration it started with.
	ConfigWarning string `json:"configWarning,omitempty"`
	// MetricsAddr is the address /metrics is served on ("" when disabled).
	MetricsAddr string   `json:"metricsAddr,omitempty"`
	Database    string   `json:"database"`
	Bridge      Bridge   `json:"bridge"`
	Tunnels     []Tunnel `json:"tunnels"`
	// PodsManaged counts the pods registered in the node database.
	PodsManaged int   `json:"podsManaged"`
	Pods        []Pod `json:"pods"`
	// NetworkPolicies counts the NetworkPolicies the agent sees in the cluster.
	NetworkPolicies int `json:"networkPolicies"`
	Namespaces      int `json:"namespaces"`
	Services        int `json:"services"`
	EndpointSlices  int `json:"endpointSlices"`
	// MCS is the state of the Multi-Cluster Services API (ServiceExport/ServiceImport).
	MCS MCS `json:"mcs"`
	// Mesh is the gateway mesh on this node (absent when the agent runs without it).
	Mesh *Mesh `json:"mesh,omitempty"`
}

// Mesh is this node's view of the gateway mesh: from the running node, or (Running false)
// from the state it last saved in the node database (SavedAt).
type Mesh struct {
	Running       bool      `json:"running"`
	Members       int       `json:"members"`
	Alive         int       `json:"alive"`
	Announcements int       `json:"announcements"`
	SavedAt       time.Time `json:"savedAt,omitzero"`
	Error         string    `json:"error,omitempty"`
	// NotGateway says why this node runs no mesh node (other Nodes are marked gateways).
	NotGateway string `json:"notGateway,omitempty"`
	// ClaimsOnBehalf is how many nodes that run no mesh (not marked gateways) have their
	// pod block claim announced by this gateway on their behalf.
	ClaimsOnBehalf int `json:"claimsOnBehalf,omitempty"`
	// RemoteInClear, on a node that is not a gateway with node encryption on, names the
	// remote clusters' pod CIDRs still routed to the gateway outside WireGuard, and why
	// (nodenet.RemoteLeg.String: "in the clear", or under strict node encryption
	// "DROPPED by strict node encryption (not sent in the clear)").
	RemoteInClear string `json:"remoteInClear,omitempty"`
}

// Bridge is the node's pod bridge.
type Bridge struct {
	Name      string   `json:"name"`
	Present   bool     `json:"present"`
	Addresses []string `json:"addresses,omitempty"`
}

// Tunnel is one WireGuard tunnel to a remote cluster (none yet: later issues add them).
type Tunnel struct {
	Cluster   string `json:"cluster"`
	Interface string `json:"interface"`
	Endpoint  string `json:"endpoint"`
	Up        bool   `json:"up"`
}

// MCS reports whether the MCS CRDs are installed and what the agent sees of them.
type MCS struct {
	Available      bool `json:"available"`
	ServiceExports int  `json:"serviceExports"`
	ServiceImports int  `json:"serviceImports"`
	// Controller says what of the MCS controller and ClusterSetIP datapath runs on this
	// agent, or why not (empty: MCS off, --mcs=false).
	Controller string `json:"controller,omitempty"`
	// Leader is whether this agent holds the MCS Lease (does the cluster's MCS work).
	Leader bool `json:"leader,omitempty"`
}

// Pod is one pod attachment registered by the CNI plugin, enriched with its API object.
type Pod struct {
	Namespace   string            `json:"namespace"`
	Name        string            `json:"name"`
	UID         string            `json:"uid,omitempty"`
	ContainerID string            `json:"containerID"`
	IfName      string            `json:"ifname"`
	HostVeth    string            `json:"hostVeth,omitempty"`
	IPs         []string          `json:"ips"`
	Labels      map[string]string `json:"labels,omitempty"`
	QoS         QoS               `json:"qos"`
	// Synced is true once the agent matched the attachment with its API object.
	Synced   bool      `json:"synced"`
	SyncedAt time.Time `json:"syncedAt,omitzero"`
}

// QoS is the pod's effective QoS; Errors lists invalid annotations (the defaults apply).
type QoS struct {
	Class            string   `json:"class"`
	MaxLatencyMs     uint32   `json:"maxLatencyMs,omitempty"`
	MinBandwidthMbps uint32   `json:"minBandwidthMbps,omitempty"`
	Errors           []string `json:"errors,omitempty"`
}

// PodList is GET /v1/pods.
type PodList struct {
	Items []Pod `json:"items"`
}

// SnapshotKey is the node database key (store kv table) under which the agent keeps a
// summary of what it last saw, so `patronus status` can show it while the agent is down.
const SnapshotKey = "agent.status"

// Snapshot is the value stored under SnapshotKey (JSON).
type Snapshot struct {
	Node            string    `json:"node"`
	ClusterID       string    `json:"clusterID"`
	NetworkPolicies int       `json:"networkPolicies"`
	Tunnels         []Tunnel  `json:"tunnels"`
	UpdatedAt       time.Time `json:"updatedAt"`
}

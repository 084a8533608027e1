package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// Paths of the policy endpoint calls the CNI plugin makes.
const (
	// PathEndpointSync (POST, body EndpointRequest): the agent compiles the pod's policy
	// and answers once the datapath enforces it (EndpointSyncResult).
	PathEndpointSync = "/v1/endpoints/sync"
	// PathEndpointRemove (POST, body EndpointRequest): the agent drops the pod's
	// enforcement state at once (CNI DEL, best effort).
	PathEndpointRemove = "/v1/endpoints/remove"
)

// EndpointRequest names one pod attachment, as the CNI plugin knows it during ADD/DEL.
type EndpointRequest struct {
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifName"`
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	UID         string   `json:"uid,omitempty"`
	IPs         []string `json:"ips,omitempty"`
	HostVeth    string   `json:"hostVeth"`
}

// EndpointSyncResult is the answer to PathEndpointSync.
type EndpointSyncResult struct {
	// Enforced is false when the agent runs without policy enforcement (then Reason says
	// why); the pod is attached unpoliced, as the agent is configured.
	Enforced bool   `json:"enforced"`
	Reason   string `json:"reason,omitempty"`
	// Isolated tells whether a policy isolates the pod (ingress or egress) at ADD time.
	IngressIsolated bool `json:"ingressIsolated"`
	EgressIsolated  bool `json:"egressIsolated"`
}

// SyncEndpoint asks the agent to enforce the pod's policy and waits for it (bounded by
// ctx and the client's timeout).
func (c *Client) SyncEndpoint(ctx context.Context, req EndpointRequest) (EndpointSyncResult, error) {
	var res EndpointSyncResult
	err := c.post(ctx, PathEndpointSync, req, &res)
	return res, err
}

// RemoveEndpoint asks the agent to drop the pod's enforcement state.
func (c *Client) RemoveEndpoint(ctx context.Context, req EndpointRequest) error {
	return c.post(ctx, PathEndpointRemove, req, nil)
}

func (c *Client) post(ctx context.Context, path string, body, v any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("agent %s: %w", path, err)
	}
	return c.send(ctx, http.MethodPost, path, bytes.NewReader(b), v)
}

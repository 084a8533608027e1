package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
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
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://patronus-agent"+path, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("agent %s: %w", path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" {
			return fmt.Errorf("%w (no answer on %s: %v)", ErrNotRunning, c.socket, ne.Err)
		}
		return fmt.Errorf("agent %s on %s: %w", path, c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		rb, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return &StatusError{Path: path, Code: resp.StatusCode, Body: string(bytes.TrimSpace(rb))}
	}
	if v == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("agent %s: decode answer: %w", path, err)
	}
	return nil
}

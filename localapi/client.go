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
	"time"
)

// ErrNotRunning is returned (wrapped) when nothing answers on the socket: the caller
// should fall back to reading the node database.
var ErrNotRunning = errors.New("agent is not running")

// Client talks to the agent over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent listening on socket ("" = DefaultSocket).
func NewClient(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	// The timeout bounds a hung agent; callers pass shorter contexts where it matters
	// (the CNI STATUS check).
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// StatusError is a non-2xx answer from the agent.
type StatusError struct {
	Path string
	Code int
	Body string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("agent %s: HTTP %d: %s", e.Path, e.Code, e.Body)
}

// Do sends a request for path (e.g. "/v1/members") and, if v is not nil, decodes the JSON
// answer into it. It is exported so that handlers mounted later (mesh) need no new method.
func (c *Client) Do(ctx context.Context, method, path string, v any) error {
	return c.send(ctx, method, path, nil, v)
}

// send is Do with an optional JSON request body.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://patronus-agent"+path, body)
	if err != nil {
		return fmt.Errorf("agent %s: %w", path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
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
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return &StatusError{Path: path, Code: resp.StatusCode, Body: string(bytes.TrimSpace(b))}
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

// Ready returns nil when the agent is ready (GET /readyz answers 200).
func (c *Client) Ready(ctx context.Context) error { return c.Do(ctx, http.MethodGet, PathReadyz, nil) }

// Healthz returns nil when the agent process is alive and serving.
func (c *Client) Healthz(ctx context.Context) error {
	return c.Do(ctx, http.MethodGet, PathHealthz, nil)
}

// Status returns GET /v1/status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.Do(ctx, http.MethodGet, PathStatus, &s)
	return s, err
}

// Pods returns GET /v1/pods.
func (c *Client) Pods(ctx context.Context) ([]Pod, error) {
	var l PodList
	err := c.Do(ctx, http.MethodGet, PathPods, &l)
	return l.Items, err
}

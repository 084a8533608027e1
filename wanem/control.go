package wanem

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// The control API (HTTP, on a unix socket or a loopback TCP address):
//
//	GET  /v1/impairment   → {"delay":"20ms","jitter":"2ms","loss_percent":1,"blackhole":false}
//	PUT  /v1/impairment   ← the same object; absent fields keep their value → the new state
//	GET  /v1/stats        → Stats
//
// Durations are Go duration strings on the wire.

// wireImpairment is Impairment as the control API spells it; pointers mark absent fields.
type wireImpairment struct {
	Delay       *string  `json:"delay,omitempty"`
	Jitter      *string  `json:"jitter,omitempty"`
	LossPercent *float64 `json:"loss_percent,omitempty"`
	Blackhole   *bool    `json:"blackhole,omitempty"`
}

func toWire(i Impairment) wireImpairment {
	d, j := i.Delay.String(), i.Jitter.String()
	return wireImpairment{Delay: &d, Jitter: &j, LossPercent: &i.LossPercent, Blackhole: &i.Blackhole}
}

// Change is a partial update: nil fields are left as they are.
type Change struct {
	Delay       *time.Duration
	Jitter      *time.Duration
	LossPercent *float64
	Blackhole   *bool
}

// Apply returns i with the change's fields set.
func (c Change) Apply(i Impairment) Impairment {
	if c.Delay != nil {
		i.Delay = *c.Delay
	}
	if c.Jitter != nil {
		i.Jitter = *c.Jitter
	}
	if c.LossPercent != nil {
		i.LossPercent = *c.LossPercent
	}
	if c.Blackhole != nil {
		i.Blackhole = *c.Blackhole
	}
	return i
}

func (c Change) wire() wireImpairment {
	var w wireImpairment
	if c.Delay != nil {
		s := c.Delay.String()
		w.Delay = &s
	}
	if c.Jitter != nil {
		s := c.Jitter.String()
		w.Jitter = &s
	}
	w.LossPercent, w.Blackhole = c.LossPercent, c.Blackhole
	return w
}

func (w wireImpairment) change() (Change, error) {
	var c Change
	for _, f := range []struct {
		name string
		in   *string
		out  **time.Duration
	}{{"delay", w.Delay, &c.Delay}, {"jitter", w.Jitter, &c.Jitter}} {
		if f.in == nil {
			continue
		}
		d, err := time.ParseDuration(*f.in)
		if err != nil {
			return c, fmt.Errorf("field %s: %w", f.name, err)
		}
		*f.out = &d
	}
	c.LossPercent, c.Blackhole = w.LossPercent, w.Blackhole
	return c, nil
}

// Handler serves the control API for r.
func Handler(r *Relay) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/impairment", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, toWire(r.Impairment()))
	})
	mux.HandleFunc("PUT /v1/impairment", func(w http.ResponseWriter, req *http.Request) {
		var wi wireImpairment
		dec := json.NewDecoder(io.LimitReader(req.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&wi); err != nil {
			http.Error(w, "bad impairment: "+err.Error(), http.StatusBadRequest)
			return
		}
		c, err := wi.change()
		if err != nil {
			http.Error(w, "bad impairment: "+err.Error(), http.StatusBadRequest)
			return
		}
		// Read-modify-write under the relay's lock would need a new method; the control
		// API has one writer in practice (a test or an operator), so this is enough.
		if err := r.Set(c.Apply(r.Impairment())); err != nil {
			http.Error(w, "bad impairment: "+err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusOK, toWire(r.Impairment()))
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, r.Stats())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// isUnix tells a unix socket path from a host:port.
func isUnix(addr string) bool { return strings.ContainsRune(addr, '/') }

// ListenControl listens on addr: a unix socket path (anything with a '/'; a stale socket
// file is replaced, mode 0600) or a TCP host:port.
func ListenControl(addr string) (net.Listener, error) {
	if !isUnix(addr) {
		return net.Listen("tcp", addr)
	}
	if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("wanem: control socket %s: %w", addr, err)
	}
	l, err := net.Listen("unix", addr)
	if err != nil {
		return nil, fmt.Errorf("wanem: control socket: %w", err)
	}
	if err := os.Chmod(addr, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("wanem: control socket: %w", err)
	}
	return l, nil
}

// ServeControl serves the control API on l until ctx ends.
func ServeControl(ctx context.Context, l net.Listener, r *Relay) error {
	srv := &http.Server{Handler: Handler(r), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("wanem: control: %w", err)
	}
	return nil
}

// Client talks to a relay's control API.
type Client struct {
	http *http.Client
	base string
}

// NewClient returns a client for the control API at addr (unix socket path or host:port).
func NewClient(addr string) *Client {
	if !isUnix(addr) {
		return &Client{http: &http.Client{Timeout: 5 * time.Second}, base: "http://" + addr}
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", addr)
	}}
	return &Client{http: &http.Client{Transport: tr, Timeout: 5 * time.Second}, base: "http://wanem"}
}

// Get returns the relay's impairment.
func (c *Client) Get(ctx context.Context) (Impairment, error) {
	var w wireImpairment
	if err := c.do(ctx, http.MethodGet, "/v1/impairment", nil, &w); err != nil {
		return Impairment{}, err
	}
	ch, err := w.change()
	if err != nil {
		return Impairment{}, err
	}
	return ch.Apply(Impairment{}), nil
}

// Set applies a partial change and returns the resulting impairment.
func (c *Client) Set(ctx context.Context, ch Change) (Impairment, error) {
	var w wireImpairment
	if err := c.do(ctx, http.MethodPut, "/v1/impairment", ch.wire(), &w); err != nil {
		return Impairment{}, err
	}
	out, err := w.change()
	if err != nil {
		return Impairment{}, err
	}
	return out.Apply(Impairment{}), nil
}

// Stats returns the relay's counters.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	err := c.do(ctx, http.MethodGet, "/v1/stats", nil, &s)
	return s, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("wanem control %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("wanem control %s: HTTP %d: %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

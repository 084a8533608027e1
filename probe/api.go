package probe

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/patronus/patronus/paths"
)

// PathsAPIPath is where the agent mounts Handler on its local API.
const PathsAPIPath = "/v1/paths"

// Handler serves GET /v1/paths: the monitor's paths.Snapshot as JSON.
func Handler(m *paths.Monitor) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(m.Snapshot(time.Now()))
	})
}

// DefaultMetricsSocket is where L7 metrics are fed (docs/CONTRACT.md).
const DefaultMetricsSocket = "/var/run/patronus/metrics.sock"

// maxLine bounds one L7 report.
const maxLine = 64 << 10

// L7Reply is the server's answer to one line.
type L7Reply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Field names the offending field when the report was rejected because of one.
	Field string `json:"field,omitempty"`
}

// ListenL7 listens on the unix socket path (parent directory created, a stale socket
// replaced, mode 0600: only root may feed the scorer).
func ListenL7(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("metrics socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("metrics socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("metrics socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("metrics socket: %w", err)
	}
	return l, nil
}

// ServeL7 reads L7 reports from every connection on l, one JSON object per line, feeds
// the valid ones to m and answers each line with one L7Reply line. It returns when ctx
// ends (closing l) or l fails.
func ServeL7(ctx context.Context, l net.Listener, m *paths.Monitor, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("metrics socket: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			done := context.AfterFunc(ctx, func() { c.Close() })
			defer done()
			serveL7Conn(c, m, log)
		}()
	}
}

func serveL7Conn(c net.Conn, m *paths.Monitor, log *slog.Logger) {
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), maxLine)
	enc := json.NewEncoder(c)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var rep L7Reply
		rec, err := paths.ParseL7(line)
		if err == nil {
			err = m.FeedL7(rec, time.Now())
		}
		if err != nil {
			rep.Error = err.Error()
			var fe *paths.FieldError
			if errors.As(err, &fe) {
				rep.Field = fe.Field
			}
			log.Debug("L7 report rejected", "err", err)
		} else {
			rep.OK = true
		}
		if enc.Encode(rep) != nil {
			return
		}
	}
	if err := sc.Err(); err != nil {
		_ = enc.Encode(L7Reply{Error: fmt.Sprintf("line longer than %d bytes or unreadable: %v", maxLine, err)})
	}
}

package mesh

import (
	"bytes"
	"context"
	"log"
	"log/slog"
)

// newStdLogger adapts serf's and memberlist's "[LEVEL] text" log lines to slog, keeping
// their level: DEBUG and INFO become Debug (they are chatty), WARN Warn, ERR Error.
func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(slogWriter{l}, "", 0)
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	msg := bytes.TrimSpace(p)
	level := slog.LevelDebug
	switch {
	case bytes.HasPrefix(msg, []byte("[ERR]")):
		level = slog.LevelError
	case bytes.HasPrefix(msg, []byte("[WARN]")):
		level = slog.LevelWarn
	}
	w.l.Log(context.Background(), level, string(msg), "component", "gossip")
	return len(p), nil
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/paths"
	"github.com/patronus/patronus/probe"
)

func newPathsCmd(e env) *cobra.Command {
	var socket, output string
	cmd := &cobra.Command{
		Use:   "paths",
		Short: "List the WAN paths this node's agent probes, their quality and the QoS classes using them",
		Long: `List every path (local uplink → remote probe endpoint) with its smoothed latency, jitter,
loss and score (0-100), the QoS classes whose traffic uses it and since when, then the
selections with their conditions (NoPathMeetsMaxLatency, NoPathUp). Read from the running
agent's GET /v1/paths.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "table", "", "json", "yaml":
			default:
				return usagef("unknown output format %q: use table, json or yaml", output)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			c := localapi.NewClient(socket)
			defer c.Close()
			var snap paths.Snapshot
			if err := c.Do(ctx, http.MethodGet, probe.PathsAPIPath, &snap); err != nil {
				var se *localapi.StatusError
				if errors.As(err, &se) && se.Code == http.StatusNotFound {
					return fmt.Errorf("the agent on %s does not serve %s (path selection not enabled): %w", c.Socket(), probe.PathsAPIPath, err)
				}
				return err
			}
			return printList(e.stdout, output, snap, func(tw *tabwriter.Writer) { pathsTable(tw, snap, time.Now()) })
		},
	}
	cmd.Flags().StringVar(&socket, "socket", localapi.DefaultSocket, "agent API unix socket")
	outputFlag(cmd, &output)
	return cmd
}

func pathsTable(tw *tabwriter.Writer, snap paths.Snapshot, now time.Time) {
	fmt.Fprintln(tw, "PATH\tSRC\tDST\tREMOTE\tSTATE\tLATENCY\tJITTER\tLOSS\tSCORE\tCLASSES")
	for _, p := range snap.Paths {
		var uses []string
		for _, u := range p.Classes {
			uses = append(uses, fmt.Sprintf("%s (%s)", classLabel(u.Class, u.MaxLatencyMs), since(u.Since, now)))
		}
		cls := strings.Join(uses, ", ")
		if cls == "" {
			cls = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s %s\t%.1fms\t%.1fms\t%.1f%%\t%.0f\t%s\n", p.ID, p.Src, p.Dst, p.Remote,
			p.State, "for "+since(p.Since, now), p.LatencyMs, p.JitterMs, p.Loss*100, p.Score, cls)
	}
	var conds []paths.SelectionStatus
	for _, s := range snap.Selections {
		if s.Condition != "" {
			conds = append(conds, s)
		}
	}
	if len(conds) > 0 {
		fmt.Fprintln(tw, "\nDST\tCLASS\tPATH\tCONDITION")
		for _, s := range conds {
			path := s.PathID
			if path == "" {
				path = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Dst, classLabel(s.Class, s.MaxLatencyMs), path, s.Condition)
		}
	}
}

func classLabel(c paths.Class, maxMs float64) string {
	if maxMs > 0 {
		return fmt.Sprintf("%s≤%gms", c, maxMs)
	}
	return string(c)
}

// since renders a duration compactly: 850ms, 12s, 3m4s, 5h2m.
func since(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}

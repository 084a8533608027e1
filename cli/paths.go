package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
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
	cmd.AddCommand(newPathsRunCmd(e))
	return cmd
}

func newPathsRunCmd(e env) *cobra.Command {
	var (
		pathFlags                    []string
		respond, apiSocket, l7Socket string
		interval, holdDown           time.Duration
		misses                       int
	)
	cmd := &cobra.Command{
		Use:   "run --path id=ID,remote=HOST:PORT[,dst=CLUSTER][,src=ADDR][,dev=IF][,bandwidth=MBPS] ... [--api-socket PATH]",
		Short: "Probe paths and select per QoS class without an agent (tests, demo); answers probes too",
		Long: `Run the path prober and the probe responder in the foreground, as the agent does on a
gateway node. Every selection change is printed as one line. With --api-socket, GET
/v1/paths is served there for "patronus paths --socket PATH".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ps []probe.Path
			for _, f := range pathFlags {
				p, err := parsePathFlag(f)
				if err != nil {
					return usagef("--path %q: %v", f, err)
				}
				ps = append(ps, p)
			}
			if len(ps) == 0 && respond == "off" {
				return usagef("nothing to do: give --path or a --respond address")
			}
			log := slog.New(slog.NewTextHandler(e.stderr, nil))
			cfg := paths.Config{Interval: interval, DownAfter: misses, HoldDown: holdDown}
			if l7Socket == "" {
				l7Socket = "off"
			}
			svc, err := probe.NewService(probe.ServiceOptions{ResponderAddr: respond, MetricsSocket: l7Socket, Logger: log,
				Prober: probe.Options{Paths: ps, Config: cfg, OnChange: func(c paths.Change) {
					from := c.From
					if from == "" {
						from = "-"
					}
					to := c.To
					if to == "" {
						to = "-"
					}
					fmt.Fprintf(e.stdout, "%s %s %s %s -> %s (%s)\n", c.At.UTC().Format("15:04:05.000"), c.Dst,
						classLabel(c.Class, float64(c.MaxLatency)/float64(time.Millisecond)), from, to, c.Reason)
				}}})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if apiSocket != "" {
				if err := os.Remove(apiSocket); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
				l, err := net.Listen("unix", apiSocket)
				if err != nil {
					return err
				}
				mux := http.NewServeMux()
				mux.Handle(probe.PathsAPIPath, svc.Handler())
				srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
				go func() { _ = srv.Serve(l) }()
				defer srv.Close()
			}
			if a := svc.ResponderAddr(); a != nil {
				log.Info("answering probes", "addr", a.String())
			}
			return svc.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&pathFlags, "path", nil, "a path: id=ID,remote=HOST:PORT[,dst=CLUSTER][,src=ADDR][,dev=IF][,bandwidth=MBPS] (repeatable)")
	f.StringVar(&respond, "respond", fmt.Sprintf(":%d", probe.DefaultPort), `answer probes on this UDP address ("off": do not)`)
	f.StringVar(&apiSocket, "api-socket", "", "serve GET /v1/paths on this unix socket")
	f.StringVar(&l7Socket, "metrics-socket", "", "accept L7 metrics on this unix socket")
	f.DurationVar(&interval, "probe-interval", 50*time.Millisecond, "probe interval")
	f.IntVar(&misses, "misses", 3, "consecutive lost probes that mark a path down")
	f.DurationVar(&holdDown, "hold-down", 5*time.Second, "no discretionary move within this time of the last; failback waits this long of health")
	return cmd
}

// parsePathFlag reads id=..,remote=..[,dst=..][,src=..][,dev=..][,bandwidth=..].
func parsePathFlag(s string) (probe.Path, error) {
	p := probe.Path{PathSpec: paths.PathSpec{Dst: "remote"}}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return p, fmt.Errorf("%q: want key=value", kv)
		}
		switch k {
		case "id":
			p.ID = v
		case "remote":
			if _, _, err := net.SplitHostPort(v); err != nil {
				return p, fmt.Errorf("remote: %w", err)
			}
			p.Remote = v
		case "dst":
			p.Dst = v
		case "src":
			p.LocalAddr, p.Src = v, v
		case "dev":
			p.Device = v
			if p.Src == "" {
				p.Src = v
			}
		case "bandwidth":
			bw, err := strconv.ParseFloat(v, 64)
			if err != nil || bw < 0 {
				return p, fmt.Errorf("bandwidth %q: want Mbps ≥ 0", v)
			}
			p.BandwidthMbps = bw
		default:
			return p, fmt.Errorf("unknown key %q (id, remote, dst, src, dev, bandwidth)", k)
		}
	}
	if p.ID == "" || p.Remote == "" {
		return p, fmt.Errorf("id and remote are required")
	}
	if p.Src == "" {
		p.Src = "default"
	}
	return p, nil
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
	if len(snap.Remote) > 0 {
		fmt.Fprintln(tw, "\nREMOTE VIEW (signed probe summaries)\tGATEWAY\tLATENCY\tJITTER\tLOSS")
		for _, r := range snap.Remote {
			fmt.Fprintf(tw, "%s\t%s/%s\t%.1fms\t%.1fms\t%.1f%%\n", r.PathID, r.Cluster, r.Origin, r.LatencyMs, r.JitterMs, r.Loss*100)
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

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
)

func newMembersCmd(e env) *cobra.Command {
	var socket, status, cluster, output string
	var tagFilters []string
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the mesh members this node's agent knows (like serf members)",
		Long: `List the mesh members with their address, status and tags, as the running agent (or
patronus mesh run) sees them. Filters combine: --status alive|failed|left|leaving,
--cluster ID, and --tag key=regexp (repeatable, anchored like serf's).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filters := map[string]*regexp.Regexp{}
			for _, t := range tagFilters {
				k, v, ok := strings.Cut(t, "=")
				if !ok || k == "" {
					return usagef("--tag %q: want key=regexp", t)
				}
				re, err := regexp.Compile("^(?:" + v + ")$")
				if err != nil {
					return usagef("--tag %q: %v", t, err)
				}
				filters[k] = re
			}
			switch status {
			case "", "alive", "failed", "left", "leaving":
			default:
				return usagef("--status %q: use alive, failed, left or leaving", status)
			}
			var members []mesh.Member
			if err := meshCall(cmd.Context(), socket, http.MethodGet, "/v1/members", nil, &members); err != nil {
				return err
			}
			out := []mesh.Member{}
			for _, m := range members {
				if (status != "" && m.Status != status) || (cluster != "" && m.Cluster != cluster) {
					continue
				}
				ok := true
				for k, re := range filters {
					if !re.MatchString(m.Tags[k]) {
						ok = false
					}
				}
				if ok {
					out = append(out, m)
				}
			}
			return printList(e.stdout, output, out, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tADDRESS\tSTATUS\tTAGS")
				for _, m := range out {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Name, m.Addr, m.Status, tableTags(m.Tags))
				}
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", localapi.DefaultSocket, "agent API unix socket")
	f.StringVar(&status, "status", "", "only members with this status: alive, failed, left, leaving")
	f.StringVar(&cluster, "cluster", "", "only members of this cluster")
	f.StringArrayVar(&tagFilters, "tag", nil, "only members whose tag matches key=regexp (repeatable)")
	outputFlag(cmd, &output)
	return cmd
}

// tableTags prints tags as k=v,... sorted, leaving out the certificate (long, and only
// of use to machines: -o json shows it).
func tableTags(tags map[string]string) string {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		if k != mesh.TagCert {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+tags[k])
	}
	return strings.Join(parts, ",")
}

// meshCall sends a request to the agent's local API on socket and decodes the JSON answer
// into out (if not nil).
func meshCall(ctx context.Context, socket, method, path string, body, out any) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://patronus-agent"+path, rd)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	resp, err := client.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" {
			return fmt.Errorf("%w: no agent answers on %s (start one, or pass --socket): %v", localapi.ErrNotRunning, socket, ne.Err)
		}
		return fmt.Errorf("agent %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("agent %s: %w", path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("agent %s: %s", path, e.Error)
		}
		return fmt.Errorf("agent %s: HTTP %d: %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("agent %s: decode: %w", path, err)
		}
	}
	return nil
}

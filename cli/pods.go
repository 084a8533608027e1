package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/qos"
	"github.com/patronus/patronus/store"
)

// newPodsCmd lists the pods on this node as the agent sees them (GET /v1/pods): the CNI
// attachment (IPs, container) joined with the API object (labels, QoS). Without an agent,
// the database's last known state is shown.
func newPodsCmd(e env) *cobra.Command {
	var socket, database, format string
	cmd := &cobra.Command{
		Use:   "pods",
		Short: "List the pods on this node: IPs, labels and QoS class as Kubernetes sees them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), agentStatusTimeout)
			defer cancel()
			c := localapi.NewClient(socket)
			defer c.Close()
			pods, err := c.Pods(ctx)
			if errors.Is(err, localapi.ErrNotRunning) {
				fmt.Fprintf(e.stderr, "agent not running (%s): showing the database %s\n", socket, database)
				pods, err = podsFromDatabase(cmd.Context(), database)
			}
			if err != nil {
				return err
			}
			if pods == nil {
				pods = []localapi.Pod{}
			}
			return printList(e.stdout, format, pods, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAMESPACE\tNAME\tIPS\tQOS\tLABELS\tSYNCED\tCONTAINER")
				for _, p := range pods {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%t\t%s\n", dash(p.Namespace), dash(p.Name), dash(strings.Join(p.IPs, ",")),
						qosText(p.QoS), dash(labelText(p.Labels)), p.Synced, shortID(p.ContainerID))
				}
			})
		},
	}
	cmd.Flags().StringVar(&socket, "socket", localapi.DefaultSocket, "agent API socket")
	cmd.Flags().StringVar(&database, "database", store.DefaultPath, "node database (used when the agent does not answer)")
	outputFlag(cmd, &format)
	return cmd
}

func podsFromDatabase(ctx context.Context, path string) ([]localapi.Pod, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	db, err := store.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.ListPods(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]localapi.Pod, 0, len(rows))
	for _, r := range rows {
		out = append(out, localapi.PodFromStore(r, qos.DefaultClass))
	}
	return out, nil
}

func qosText(q localapi.QoS) string {
	s := q.Class
	if q.MaxLatencyMs > 0 {
		s += fmt.Sprintf(",<=%dms", q.MaxLatencyMs)
	}
	if q.MinBandwidthMbps > 0 {
		s += fmt.Sprintf(",>=%dMbps", q.MinBandwidthMbps)
	}
	if len(q.Errors) > 0 {
		s += " (invalid annotation)"
	}
	return s
}

func labelText(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

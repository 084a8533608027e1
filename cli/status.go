package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/patronus/patronus/cni"
	"github.com/patronus/patronus/dataplane/link"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/store"
)

// Status is what `patronus status` reports. Each part is gathered on its own and knows
// how to print itself as ✓/✗ lines; a new part (tunnels, policies) adds a field here, a
// gather call in gatherStatus and its lines in Status.lines.
type Status struct {
	CNI   CNIStatus    `json:"cni"`
	Agent *AgentStatus `json:"agent,omitempty"` // status_agent.go
}

// CNIStatus is the node's CNI side: plugin, bridge, database, pods.
type CNIStatus struct {
	Plugin   PluginStatus   `json:"plugin"`
	Bridge   BridgeStatus   `json:"bridge"`
	Database DatabaseStatus `json:"database"`
}

// PluginStatus: is patronus-cni installed in the CNI bin dir.
type PluginStatus struct {
	Path      string `json:"path"`
	Installed bool   `json:"installed"`
	Error     string `json:"error,omitempty"`
}

// BridgeStatus: the pod bridge and its gateway addresses. It is absent until the first
// pod's ADD creates it.
type BridgeStatus struct {
	Name      string   `json:"name"`
	Present   bool     `json:"present"`
	Addresses []string `json:"addresses,omitempty"`
	Error     string   `json:"error,omitempty"`
}

// DatabaseStatus: the node database and the attachments registered in it.
type DatabaseStatus struct {
	Path          string `json:"path"`
	OK            bool   `json:"ok"`
	SchemaVersion int    `json:"schemaVersion,omitempty"`
	PodsManaged   int    `json:"podsManaged"`
	Error         string `json:"error,omitempty"`
}

// statusLine is one ✓/✗ line.
type statusLine struct {
	ok   bool
	text string
}

func (s Status) lines() []statusLine {
	c := s.CNI
	var out []statusLine
	if c.Plugin.Installed {
		out = append(out, statusLine{true, "CNI plugin installed: " + c.Plugin.Path})
	} else {
		out = append(out, statusLine{false, fmt.Sprintf("CNI plugin not installed at %s: %s (run patronus install-cni)", c.Plugin.Path, c.Plugin.Error)})
	}
	switch {
	case c.Bridge.Present && len(c.Bridge.Addresses) > 0:
		out = append(out, statusLine{true, fmt.Sprintf("Bridge interface: %s (%s)", c.Bridge.Name, joinComma(c.Bridge.Addresses))})
	case c.Bridge.Present:
		out = append(out, statusLine{false, fmt.Sprintf("Bridge interface: %s has no gateway address", c.Bridge.Name)})
	default:
		out = append(out, statusLine{false, fmt.Sprintf("Bridge interface: %s %s", c.Bridge.Name, c.Bridge.Error)})
	}
	if c.Database.OK {
		out = append(out, statusLine{true, "SD-WAN database: " + c.Database.Path})
		if !s.Agent.isEdge() { // an edge node runs no tunnels
			out = append(out, s.Agent.tunnelLines()...)
		}
		out = append(out, statusLine{true, fmt.Sprintf("Pods managed: %d", c.Database.PodsManaged)})
	} else {
		out = append(out, statusLine{false, fmt.Sprintf("SD-WAN database: %s: %s", c.Database.Path, c.Database.Error)})
	}
	if s.Agent.isEdge() {
		return append(out, s.Agent.edgeLines()...)
	}
	return append(out, s.Agent.lines()...)
}

func joinComma(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += ", "
		}
		out += s
	}
	return out
}

// statusOptions are the paths status looks at (flags; defaults from docs/CONTRACT.md).
type statusOptions struct {
	binDir, database, bridge string
	// socket is the agent's; databaseSet/bridgeSet: the user chose them (else the running
	// agent's are shown).
	socket                 string
	databaseSet, bridgeSet bool
}

func gatherStatus(ctx context.Context, o statusOptions) Status {
	agent := gatherAgentStatus(ctx, &o)
	return Status{CNI: gatherCNIStatus(ctx, o), Agent: agent}
}

func gatherCNIStatus(ctx context.Context, o statusOptions) CNIStatus {
	var s CNIStatus
	s.Plugin.Path = filepath.Join(o.binDir, cni.PluginName)
	if fi, err := os.Stat(s.Plugin.Path); err != nil {
		s.Plugin.Error = err.Error()
	} else if fi.Mode()&0o111 == 0 || !fi.Mode().IsRegular() {
		s.Plugin.Error = "not an executable file"
	} else {
		s.Plugin.Installed = true
	}

	s.Bridge.Name = o.bridge
	addrs, err := link.Netlink{}.Addrs(o.bridge)
	switch {
	case errors.Is(err, link.ErrNotFound):
		s.Bridge.Error = "not found (the first pod's ADD creates it)"
	case err != nil:
		s.Bridge.Error = err.Error()
	default:
		s.Bridge.Present = true
		for _, a := range addrs {
			s.Bridge.Addresses = append(s.Bridge.Addresses, a.String())
		}
	}

	s.Database.Path = o.database
	// Status must not create the database: look before opening.
	if _, err := os.Stat(o.database); err != nil {
		s.Database.Error = "not found (the first pod's ADD creates it)"
		if !errors.Is(err, os.ErrNotExist) {
			s.Database.Error = err.Error()
		}
		return s
	}
	db, err := store.Open(ctx, o.database)
	if err != nil {
		s.Database.Error = err.Error()
		return s
	}
	defer db.Close()
	n, err := db.CountPods(ctx)
	if err != nil {
		s.Database.Error = err.Error()
		return s
	}
	s.Database.OK, s.Database.PodsManaged, s.Database.SchemaVersion = true, n, store.SchemaVersion()
	return s
}

func printStatus(w io.Writer, format string, s Status) error {
	return printList(w, format, s, func(tw *tabwriter.Writer) {
		for _, l := range s.lines() {
			mark := "✓"
			if !l.ok {
				mark = "✗"
			}
			fmt.Fprintf(tw, "%s %s\n", mark, l.text)
		}
	})
}

func newStatusCmd(e env) *cobra.Command {
	var o statusOptions
	var format string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this node's Patronus state: CNI plugin, bridge, database, tunnels, pods, NetworkPolicies",
		Long: "Prints one ✓/✗ line per check. Exit code 1 when any check failed.\n" +
			"Run it in the node's network namespace (the bridge is looked up there).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.databaseSet, o.bridgeSet = cmd.Flags().Changed("database"), cmd.Flags().Changed("bridge")
			s := gatherStatus(cmd.Context(), o)
			if err := printStatus(e.stdout, format, s); err != nil {
				return err
			}
			for _, l := range s.lines() {
				if !l.ok {
					return errors.New("some status checks failed")
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.binDir, "cni-bin-dir", "/opt/cni/bin", "CNI plugin directory")
	cmd.Flags().StringVar(&o.database, "database", store.DefaultPath, "node database")
	cmd.Flags().StringVar(&o.bridge, "bridge", cni.DefaultBridge, "pod bridge")
	cmd.Flags().StringVar(&o.socket, "socket", localapi.DefaultSocket, "agent API socket (when the agent answers, its view is shown)")
	outputFlag(cmd, &format)
	return cmd
}

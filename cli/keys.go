package cli

import (
	"fmt"
	"net/http"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/patronus/patronus/dataplane/tunnel"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/nodenet"
)

func newKeysCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "The node's WireGuard keys: the tunnel's (rotated every key-rotation, 24h by default) and, with --node, the node-to-node encryption key",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newKeysRotateCmd(e), newKeysShowCmd(e))
	return cmd
}

func newKeysRotateCmd(e env) *cobra.Command {
	var socket, output string
	var node bool
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate this gateway's WireGuard key now (--node: the node-to-node encryption key)",
		Long: `Ask the running agent to rotate its WireGuard key: it applies the new key to its own
device first, then announces the new public key signed through the mesh; the remote
gateways update their peer on receipt. Connections crossing the tunnel survive (a stall of
a few hundred milliseconds).

With --node, rotate instead the node-to-node encryption key (node-encryption: wireguard,
device ` + nodenet.WGDevice + `): the agent saves the new key, applies it to its device, then
publishes the public key (Node annotation ` + nodenet.AnnotationWGKey + `; edge mode:
its signed podblock claim); every other node swaps its peer and handshakes at once. Any
node can do this, gateway or not; the agent answers 409 when node encryption is off.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutputFormat(output); err != nil {
				return err // before rotating: a usage error must not have side effects
			}
			path := tunnel.PathKeysRotate
			if node {
				path = nodenet.RotatePath
			}
			// Both answers have the same fields (nodenet.RotateResult mirrors this one).
			var res tunnel.RotateResult
			if err := meshCall(cmd.Context(), socket, http.MethodPost, path, nil, &res); err != nil {
				return err
			}
			if res.Warning != "" {
				fmt.Fprintln(e.stderr, "warning:", res.Warning)
			}
			return printList(e.stdout, output, res, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "PUBLIC KEY\tPREVIOUS\tROTATED AT")
				fmt.Fprintf(tw, "%s\t%s\t%s\n", res.PublicKey, res.PreviousPublicKey, res.RotatedAt.Format("2006-01-02T15:04:05Z07:00"))
			})
		},
	}
	cmd.Flags().StringVar(&socket, "socket", localapi.DefaultSocket, "agent API unix socket")
	cmd.Flags().BoolVar(&node, "node", false, "rotate the node-to-node encryption key ("+nodenet.WGDevice+") instead of the inter-cluster tunnel's")
	outputFlag(cmd, &output)
	return cmd
}

func newKeysShowCmd(e env) *cobra.Command {
	var socket, output string
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show this gateway's WireGuard public key and its tunnels' peer keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st tunnel.Status
			if err := meshCall(cmd.Context(), socket, http.MethodGet, tunnel.PathTunnels, nil, &st); err != nil {
				return err
			}
			return printList(e.stdout, output, st, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "DEVICE\t%s\nPUBLIC KEY\t%s\n\n", st.Device, st.PublicKey)
				fmt.Fprintln(tw, "CLUSTER\tGATEWAY\tENDPOINT\tPEER KEY")
				for _, t := range st.Tunnels {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Cluster, t.Gateway, t.Endpoint, t.PublicKey)
				}
			})
		},
	}
	cmd.Flags().StringVar(&socket, "socket", localapi.DefaultSocket, "agent API unix socket")
	outputFlag(cmd, &output)
	return cmd
}

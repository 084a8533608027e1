package cli

import (
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/mesh"
)

func newEventCmd(e env) *cobra.Command {
	var socket string
	var coalesce bool
	cmd := &cobra.Command{
		Use:   "event NAME [PAYLOAD]",
		Short: "Send a user event to the whole mesh (like serf event); handlers see it as SERF_USER_EVENT",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := mesh.EventRequest{Name: args[0], Coalesce: coalesce}
			if len(args) == 2 {
				req.Payload = []byte(args[1])
			}
			if err := meshCall(cmd.Context(), socket, http.MethodPost, "/v1/events", req, nil); err != nil {
				return err
			}
			_, err := fmt.Fprintf(e.stdout, "Event '%s' dispatched! Coalescing enabled: %v\n", req.Name, coalesce)
			return err
		},
	}
	cmd.Flags().StringVar(&socket, "socket", localapi.DefaultSocket, "agent API unix socket")
	cmd.Flags().BoolVar(&coalesce, "coalesce", true, "let the mesh coalesce events of this name (only the latest is delivered in a burst)")
	return cmd
}

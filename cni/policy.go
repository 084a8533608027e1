package cni

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/patronus/patronus/localapi"
)

// PolicySyncTimeout bounds ADD's wait for the agent to put the pod's NetworkPolicy in
// the datapath.
const PolicySyncTimeout = 10 * time.Second

// syncPolicy asks the agent to enforce the new pod's policy and returns once it does,
// so that a pod a policy isolates is isolated from its first packet. An agent that is
// down or does not answer in time fails ADD with code 11 (try again later): the runtime
// retries the sandbox, and no pod runs unpoliced while enforcement is on.
func syncPolicy(ctx context.Context, socket string, req localapi.EndpointRequest) error {
	ctx, cancel := context.WithTimeout(ctx, PolicySyncTimeout)
	defer cancel()
	c := localapi.NewClient(socket)
	defer c.Close()
	_, err := c.SyncEndpoint(ctx, req)
	if err == nil {
		return nil
	}
	msg := "NetworkPolicy enforcement is on (sdwan.enable_policy_enforcement) but the agent did not enforce the pod's policy"
	switch {
	case errors.Is(err, localapi.ErrNotRunning):
		msg = "NetworkPolicy enforcement is on (sdwan.enable_policy_enforcement) but the agent is not running"
	case errors.Is(err, context.DeadlineExceeded):
		msg = fmt.Sprintf("NetworkPolicy enforcement is on but the agent did not enforce the pod's policy within %s", PolicySyncTimeout)
	}
	return types.NewError(types.ErrTryAgainLater, msg, err.Error())
}

// removePolicy tells the agent the pod is gone (best effort: the agent's next sync
// drops it anyway once the database row is deleted).
func removePolicy(socket string, req localapi.EndpointRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c := localapi.NewClient(socket)
	defer c.Close()
	return c.RemoveEndpoint(ctx, req)
}

func ipStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

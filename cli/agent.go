package cli

import (
	"context"
	"log/slog"
	"os/signal"
	"strings"
	"syscall"

	"github.com/patronus/patronus/agent"
	"github.com/patronus/patronus/config"
	"github.com/patronus/patronus/localapi"
	"github.com/patronus/patronus/store"
	"github.com/spf13/cobra"
	"k8s.io/klog/v2"
)

func newAgentCmd(e env) *cobra.Command {
	var (
		o          agent.Options
		po         agent.PolicyOptions
		enforce    bool
		nno        agent.NodeNetOptions
		manageCNI  bool
		nodeRoute  bool
		masq       bool
		nodeEnc    string
		nodeStrict bool
		gw         agentGatewayFlags
		mcsFlags   agentMCSFlags
		tun        agentTunnelFlags
		logFormat  string
		logLevel   string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent (the DaemonSet process)",
		Long: `Run the node agent: it watches the Kubernetes API (pods on this node, namespaces,
NetworkPolicies, Services, EndpointSlices, MCS ServiceExports/ServiceImports), matches the
pods the CNI plugin registered in the node database with their API objects, and serves the
local API (` + localapi.DefaultSocket + `) and metrics (` + agent.DefaultMetricsAddr + `).

Configuration: CLUSTER_ID and NODE_NAME from the environment (or the flags), the
ConfigMap kube-system/patronus-config, and the CNI conflist's sdwan section.
SIGTERM or SIGINT stops it cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(e, logFormat, logLevel)
			if err != nil {
				return err
			}
			if o.Kubeconfig == "" {
				o.Kubeconfig = e.getenv("KUBECONFIG")
			}
			if o.NodeName == "" {
				o.NodeName = e.getenv(config.EnvNodeName)
			}
			if o.ClusterID == "" {
				o.ClusterID = e.getenv(config.EnvClusterID)
			}
			if !cmd.Flags().Changed("config-namespace") && e.getenv("POD_NAMESPACE") != "" {
				o.ConfigNamespace = e.getenv("POD_NAMESPACE") // the DaemonSet's namespace (docs/CONTRACT.md)
			}
			o.Logger = log
			o.Version = Version
			if enforce {
				o.Policy = &po
			}
			if manageCNI {
				nno.NoRoutes = !nodeRoute
				if cmd.Flags().Changed("masquerade") {
					nno.Masquerade = &masq
				}
				if nno.Encryption, err = nodeEncryptionTier(nodeEnc, cmd.Flags().Changed("node-encryption"), e.getenv); err != nil {
					return err
				}
				nno.EncryptionStrict = nodeEncryptionStrictTier(nodeStrict, cmd.Flags().Changed("node-encryption-strict"), e.getenv)
				o.NodeNet = &nno
			}
			if err := gw.apply(&o); err != nil {
				return err
			}
			mcsFlags.apply(&o)
			if err := tun.apply(&o); err != nil {
				return err
			}
			// client-go logs through klog, a process-wide logger; send it to the same
			// structured output. This is the process's main, so setting it here is fine.
			klog.SetSlogLogger(log)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return agent.Run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, else the in-cluster ServiceAccount)")
	f.StringVar(&o.NodeName, "node-name", "", "this node's name (default $NODE_NAME)")
	f.StringVar(&o.ClusterID, "cluster-id", "", "cluster id, same precedence as $CLUSTER_ID (default $CLUSTER_ID)")
	f.StringVar(&o.DatabasePath, "database", store.DefaultPath, "node database shared with the CNI plugin")
	f.StringVar(&o.SocketPath, "socket", localapi.DefaultSocket, "local API unix socket")
	f.StringVar(&o.MetricsAddr, "metrics-addr", agent.DefaultMetricsAddr, "metrics and health address (host:port, or off)")
	f.StringVar(&o.ConflistPath, "cni-conflist", config.DefaultConflistPath, "CNI conflist to read the bridge and sdwan settings from")
	f.StringVar(&o.ConfigNamespace, "config-namespace", config.ConfigMapNamespace, "namespace of the patronus-config ConfigMap (default $POD_NAMESPACE, else kube-system)")
	f.DurationVar(&o.ResyncPeriod, "resync", agent.DefaultResyncPeriod, "periodic full resync of the informers")
	f.DurationVar(&o.StorePollInterval, "db-poll", agent.DefaultStorePollInterval, "how often the database is scanned for pods the plugin added or removed")
	f.BoolVar(&enforce, "enforce-policy", true, "enforce NetworkPolicy on this node's pods (eBPF and/or nftables, ConfigMap key datapath)")
	f.StringVar(&po.Datapath, "datapath", "", "override the ConfigMap's datapath: ebpf, nftables or both")
	f.StringVar(&po.BPFFS, "bpffs", agent.DefaultBPFFS, "bpffs mount point (mounted if it is not one)")
	f.StringVar(&po.PinDir, "bpf-pin-dir", "", "directory for pinned BPF programs, maps and links (default <bpffs>/patronus)")
	f.StringVar(&po.AuditLog, "audit-log", "", "also append the policy audit log (JSON lines) to this file")
	f.StringSliceVar(&po.Uplinks, "uplink", nil, "node interface where local pods' traffic leaves the node (repeatable; completes egress checks of Service traffic DNATed to remote pods); default: the devices of the node's routes (underlay, VXLAN, WireGuard), found again on every sync")
	f.BoolVar(&manageCNI, "manage-conflist", false, "own the CNI conflist (the DaemonSet sets it, with install-cni --no-conflist): claim this node's pod block (Node podCIDR, else a Lease on cluster-cidr), write the conflist for it, route other nodes' blocks, masquerade; /readyz fails until the conflist is written")
	f.BoolVar(&nodeRoute, "node-routes", true, "route other nodes' pod blocks (direct or VXLAN ptx0); false: the conflist only")
	f.BoolVar(&masq, "masquerade", true, "masquerade pod traffic leaving cluster-cidr to the node address (default: the ConfigMap's masquerade, true)")
	f.StringVar(&nodeEnc, "node-encryption", "", "with --manage-conflist: node-to-node encryption, wireguard or none (default $NODE_ENCRYPTION, else the ConfigMap's node-encryption, else none): WireGuard device ptw0 on UDP 51819, key published on the Node")
	f.BoolVar(&nodeStrict, "node-encryption-strict", false, "with --node-encryption wireguard: drop this node's pod traffic to other nodes' pods, and to remote clusters' cidrs, that would leave unencrypted (a peer without a key, ptw0 not up) instead of sending it in the clear (default $NODE_ENCRYPTION_STRICT, else the ConfigMap's node-encryption-strict, else false)")
	gw.register(f)
	mcsFlags.register(f)
	tun.register(f)
	f.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

// newLogger builds the agent's logger on stdout (the audit log's home, docs/CONTRACT.md).
func newLogger(e env, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	ho := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "json":
		return slog.New(slog.NewJSONHandler(e.stdout, ho)), nil
	case "text":
		return slog.New(slog.NewTextHandler(e.stdout, ho)), nil
	default:
		return nil, usagef("--log-format %q: use json or text", format)
	}
}

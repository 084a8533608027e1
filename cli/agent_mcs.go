package cli

import (
	"github.com/spf13/pflag"

	"github.com/patronus/patronus/agent"
)

// agentMCSFlags are `patronus agent`'s Multi-Cluster Services flags. The clusterset IP
// range comes from the ConfigMap (clusterset-ip-range).
type agentMCSFlags struct {
	on, noDatapath bool
}

func (m *agentMCSFlags) register(f *pflag.FlagSet) {
	f.BoolVar(&m.on, "mcs", true, "run Multi-Cluster Services once the MCS CRDs exist: the ClusterSetIP datapath on every agent, the export/import controller (one per cluster, by Lease) on gateways")
	f.BoolVar(&m.noDatapath, "mcs-no-datapath", false, "with --mcs: do not program the ClusterSetIP translation (nftables) on this node")
}

func (m *agentMCSFlags) apply(o *agent.Options) {
	if m.on {
		o.MCS = &agent.MCSOptions{NoDatapath: m.noDatapath}
	}
}

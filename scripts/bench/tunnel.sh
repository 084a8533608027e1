#!/usr/bin/env bash
# Tunnel dataplane benchmark: added RTT of the userspace WireGuard tunnel against the bare
# underlay (ping, 500 probes), TCP throughput with 1 and 4 streams (iperf3) on both paths,
# and CPU per Gbit/s (iperf3 client + server + the process holding the WireGuard devices,
# counted per process because the machine is shared). Both paths are measured in the same
# run, rounds interleaved, medians reported.
#
# Topology (integration/tunnel): two gateway namespaces joined by an underlay veth, each
# with a bridge and a pod namespace (10.244.0.0/16 and 10.248.0.0/16); the tunnel path is
# pod A → bridge → gateway A → wg → underlay → wg → gateway B → bridge → pod B; the
# baselines are gateway A → gateway B over the same veth, and the same pod-to-pod path in a
# second copy of the topology whose gateways route the pod CIDRs over the underlay in the
# clear (the difference to the tunnel is WireGuard alone).
#
# Usage: sudo scripts/bench/tunnel.sh [seconds per iperf3 run, default 5] [rounds, default 3]
# Needs: root, iperf3, iputils-ping, go. Touches only its own namespaces.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
ROUNDS=${2:-3}
[ "$(id -u)" = 0 ] || { echo "tunnel.sh: needs root (network namespaces)" >&2; exit 1; }
for t in iperf3 ping ip; do
	command -v "$t" >/dev/null || { echo "tunnel.sh: $t is missing (apt-get install iperf3 iputils-ping iproute2)" >&2; exit 1; }
done
echo "# tunnel benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1 /proc/loadavg)"
PATRONUS_BENCH_TUNNEL=1 PATRONUS_BENCH_SECONDS=$SECS PATRONUS_BENCH_ROUNDS=$ROUNDS \
	go test -count=1 -run '^TestTunnelBench$' -v -timeout 30m ./integration/tunnel/ |
	sed -n '/rounds of/,/added RTT/p'

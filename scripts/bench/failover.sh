#!/usr/bin/env bash
# Path failover benchmark (issue 7). Root: builds network namespaces (gateway A, a "wan"
# namespace with one wanem relay per path, gateway B) with two paths (RTT 5 ms and 30 ms)
# and blackholes the active path ROUNDS times (default 20) per (probe interval, miss
# threshold). Two measurements, each p50/p99/max next to the theoretical floor
# interval × misses:
#   detection  (BenchmarkFailover): blackhole → the latency-sensitive selection moved;
#   traffic    (BenchmarkTrafficFailover): a steered pod's UDP flow (1 datagram/ms) through
#              per-path WireGuard tunnels, longest silence at the receiver.
# Results go into BENCHMARKS.md by hand.
#
#   scripts/bench/failover.sh                      # 50ms×3 and 20ms×3, 20 rounds each
#   ROUNDS=50 CONFIGS="50ms:3 50ms:2 10ms:3" scripts/bench/failover.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
	echo "failover.sh: needs root (network namespaces)" >&2
	exit 1
fi
rounds=${ROUNDS:-20}
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $rounds blackholes per configuration"
printf '%-10s %-10s %-7s %-10s %-10s %-10s %-10s\n' what interval misses floor_ms p50_ms p99_ms max_ms
for c in ${CONFIGS:-50ms:3 20ms:3}; do
	interval=${c%%:*}
	misses=${c##*:}
	for b in Failover:detection TrafficFailover:traffic; do
		out=$(PATRONUS_PROBE_INTERVAL=$interval PATRONUS_PROBE_MISSES=$misses \
			go test -run '^$' -bench "^Benchmark${b%%:*}\$" -benchtime "${rounds}x" -timeout 20m ./integration/paths/ 2>&1) || {
			echo "$out" >&2
			exit 1
		}
		line=$(echo "$out" | grep -E "^Benchmark${b%%:*}-" | tail -1)
		metric() { echo "$line" | grep -oE "[0-9.]+ $1" | cut -d' ' -f1; }
		printf '%-10s %-10s %-7s %-10s %-10s %-10s %-10s\n' "${b##*:}" "$interval" "$misses" "$(metric floor-ms)" "$(metric p50-ms)" "$(metric p99-ms)" "$(metric max-ms)"
	done
done

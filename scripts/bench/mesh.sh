#!/usr/bin/env bash
# Mesh convergence benchmark (issue 5): N in-process agents (default 50) over real UDP/TCP
# on distinct loopback addresses 127.x.y.1..N, LAN gossip timing, one join seed.
# Reports time to full membership, announcement propagation p50/p99 (per agent, and until
# every agent has it) and gossip bytes/s per agent, for patronus and for plain serf (the
# baseline measured in the same run). Results go into BENCHMARKS.md by hand.
#
#   scripts/bench/mesh.sh            # 50 agents
#   AGENTS=20 scripts/bench/mesh.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATRONUS_BENCH_AGENTS=${AGENTS:-50}
go test -run '^$' -bench '^BenchmarkMeshConvergence$' -benchtime 1x -count "${COUNT:-1}" -timeout 20m ./mesh/ |
	grep -E '^(Benchmark|goos|goarch|cpu|ok|FAIL)'

#!/usr/bin/env bash
# `make bench`: every benchmark, one after another, each printing its own results with the
# baseline measured in the same run (copy them into BENCHMARKS.md by hand). Root: most of
# them build network namespaces. BENCH="cni policy" limits the set.
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/deps.sh
make --no-print-directory build
for b in ${BENCH:-cni policy tunnel failover mesh}; do
	printf '\n==> scripts/bench/%s.sh\n' "$b"
	"./scripts/bench/$b.sh"
done
printf '\n==> go test -bench (policy compiler, CNI config, agent resync, nodenet planning)\n'
go test -run '^$' -bench . -benchtime 20x ./policy/ ./agent/ ./nodenet/ ./dataplane/enforce/

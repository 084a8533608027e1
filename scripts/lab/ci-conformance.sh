#!/usr/bin/env bash
# CI's conformance check (issue 10): a lab of its own (1 cluster x 2 nodes, Patronus from
# manifests/), the basic sig-network checks (`lab.sh smoke`: pod IPs, pod-to-pod on one node
# and across nodes, pod to the kubernetes Service by its DNS name through CoreDNS), then a
# representative subset of the upstream NetworkPolicy e2e cases (the lab's Kubernetes version,
# unmodified, in e2e-netpol.test: upstream's e2e suite with only the NetworkPolicy specs linked
# in, see scripts/lab/e2enetpol/) in one combined ginkgo focus, split over CI_E2E_PROCS
# e2e-netpol.test processes (default 3) running side by side. The lab is always removed (trap).
#
#   scripts/lab/ci-conformance.sh
#
# Exit status non-zero if the lab does not come up, a smoke check fails, or any case does not
# pass (or does not run). Results: $CI_CONFORMANCE_OUT (default /var/tmp/patronus-ci-conformance):
# results.md (a table, also printed), junit-N.xml and e2e-N.log per process, smoke.log.
# Environment: LAB_PREFIX (default pci), LAB_DIR (default /var/tmp/patronus-lab-ci): never the
# demo's lab; CI_E2E_PROCS (default 3: 12 cases took 347 s with 3, 459 s with 2), E2E_TIMEOUT (whole run, default 25m).
# The full suite and per-datapath runs are `make conformance` (scripts/lab/conformance.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
# junit_testcases, junit_attr, junit_secs, xml_unescape, junit_result, junit_table_head, junit_row.
# shellcheck source=../lib/common.sh
. scripts/lib/common.sh
export LAB_PREFIX=${LAB_PREFIX:-pci}
export LAB_DIR=${LAB_DIR:-/var/tmp/patronus-lab-ci}
export LAB_CLUSTERS=1 LAB_NODES=2
OUT=${CI_CONFORMANCE_OUT:-/var/tmp/patronus-ci-conformance}
PROCS=${CI_E2E_PROCS:-3}
E2E_TIMEOUT=${E2E_TIMEOUT:-25m}

log() { echo "ci-conformance: $(date +%H:%M:%S) $*" >&2; }

# label | ginkgo focus regex (on the full spec text; the TCP ones do not match their
# "[LinuxOnly] ... using UDP" twins, whose text differs)
CASES=(
	"default-deny-ingress (TCP)|Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy"
	"default-deny-all (TCP)|Netpol NetworkPolicy between server and client should support a 'default-deny-all' policy"
	"namespace selector (TCP)|Netpol NetworkPolicy between server and client should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector"
	"pod and namespace selector (TCP)|Netpol NetworkPolicy between server and client should enforce policy based on PodSelector and NamespaceSelector"
	"named port, ingress (TCP)|Netpol NetworkPolicy between server and client should allow ingress access on one named port"
	"named port, egress (TCP)|Netpol NetworkPolicy between server and client should allow egress access on one named port"
	"egress deny in namespace (TCP)|Netpol NetworkPolicy between server and client should deny egress from all pods in a namespace"
	"ipBlock with except (TCP)|Netpol NetworkPolicy between server and client should enforce except clause while egress access to server in CIDR block"
	"policy update (TCP)|Netpol NetworkPolicy between server and client should enforce updated policy"
	"policy deleted (TCP)|Netpol NetworkPolicy between server and client should stop enforcing policies after they are deleted"
	"ports (TCP)|Netpol NetworkPolicy between server and client should enforce policy based on Ports"
	"default-deny-ingress (UDP)|Netpol \\[LinuxOnly\\] NetworkPolicy between server and client using UDP should support a 'default-deny-ingress' policy"
)

[ "$(id -u)" = 0 ] || { log "needs root (the lab)"; exit 1; }
t_all=$(date +%s)
mkdir -p "$OUT"
rm -f "$OUT"/results.md "$OUT"/table.md "$OUT"/junit-*.xml "$OUT"/e2e-*.log "$OUT"/smoke.log "$OUT"/lab-up.log "$OUT"/down*.log

cleanup() {
	local rc=$?
	log "removing the lab ($LAB_PREFIX, $LAB_DIR)"
	./scripts/lab/lab.sh down >"$OUT/down.log" 2>&1 || log "WARNING: lab.sh down failed (see $OUT/down.log)"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A lab left by an interrupted run (same prefix) goes first.
if [ -e "$LAB_DIR" ]; then ./scripts/lab/lab.sh down >"$OUT/down-before.log" 2>&1 || true; fi

t0=$(date +%s)
log "e2e-netpol.test (cached; a fresh machine builds it once: a few minutes)"
E2E_DIR=$(./scripts/lab/build.sh e2e-netpol.test)
t_build=$(( $(date +%s) - t0 ))

t0=$(date +%s)
log "lab up: 1 cluster x 2 nodes, $LAB_PREFIX in $LAB_DIR (log $OUT/lab-up.log)"
if ! ./scripts/lab/lab.sh up >"$OUT/lab-up.log" 2>&1; then
	tail -30 "$OUT/lab-up.log" >&2
	log "FAIL: lab bring-up"
	exit 1
fi
t_up=$(( $(date +%s) - t0 ))
# shellcheck disable=SC1091
. "$LAB_DIR/bin.env"

t0=$(date +%s)
log "sig-network basics (lab.sh smoke)"
smoke_rc=0
./scripts/lab/lab.sh smoke >"$OUT/smoke.log" 2>&1 || smoke_rc=$?
sed 's/^/  /' "$OUT/smoke.log" | grep -E '^  cluster|smoke:' >&2 || true
t_smoke=$(( $(date +%s) - t0 ))
if [ $smoke_rc != 0 ]; then log "FAIL: smoke checks"; exit 1; fi
# The smoke pods would only add noise to the e2e run.
"$LAB_DIR/c1/kubectl" delete pods -n default --all --wait=false >/dev/null 2>&1 || true

# Split the cases over PROCS processes (round robin) and join each share into one focus.
focus=()
for p in $(seq 0 $((PROCS - 1))); do focus[p]=""; done
i=0
for c in "${CASES[@]}"; do
	p=$((i % PROCS))
	focus[p]="${focus[p]:+${focus[p]}|}${c#*|}"
	i=$((i + 1))
done

t0=$(date +%s)
log "${#CASES[@]} NetworkPolicy e2e cases in $PROCS e2e-netpol.test process(es) (logs $OUT/e2e-N.log)"
pids=()
for p in $(seq 0 $((PROCS - 1))); do
	# In the control plane's network namespace: it reaches the API server; the probes are
	# `kubectl exec` through it.
	nsenter --net="/run/netns/$LAB_PREFIX-c1-cp" -- "$E2E_DIR/e2e-netpol.test" \
		--provider=local --kubeconfig="$LAB_DIR/c1/admin.kubeconfig" --kubectl-path="$K8S_BIN/kubectl" \
		--ginkgo.focus="${focus[p]}" --ginkgo.skip=SCTP --ginkgo.timeout="$E2E_TIMEOUT" \
		--ginkgo.no-color --ginkgo.junit-report="$OUT/junit-$p.xml" --dump-logs-on-failure=false \
		>"$OUT/e2e-$p.log" 2>&1 &
	pids+=($!)
done
rcs=()
for p in "${!pids[@]}"; do
	rc=0
	wait "${pids[p]}" || rc=$?
	rcs+=("$rc")
done
t_e2e=$(( $(date +%s) - t0 ))

# Per case: its testcase in the junit reports (status and time); a case that did not run is a
# failure too.
pass=0
fail=0
junit_table_head Case >"$OUT/table.md"
for c in "${CASES[@]}"; do
	label=${c%%|*}
	re=${c#*|}
	# Every process's report lists every spec: the one that ran it has it not skipped.
	lines=$(junit_testcases "$OUT"/junit-*.xml 2>/dev/null | xml_unescape | grep -E "name=\"[^\"]*$re" || true)
	line=$(grep -v 'status="skipped"' <<<"$lines" | head -1 || true)
	status=$(junit_attr status <<<"$line")
	secs=$(junit_secs <<<"$line")
	res=$(junit_result "$status")
	if [ "$res" = pass ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
	junit_row "$label" "$res" "$secs" >>"$OUT/table.md"
done
ran=$(grep -ho 'Ran [0-9]* of [0-9]* Specs' "$OUT"/e2e-*.log | paste -sd, - || true)
datapath=$("$LAB_DIR/c1/kubectl" -n kube-system get configmap patronus-config -o jsonpath='{.data.datapath}' 2>/dev/null || echo '?')
total=$(( $(date +%s) - t_all ))
{
	echo "## CI NetworkPolicy subset, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- Command: \`scripts/lab/ci-conformance.sh\` (run by \`make test\`), NetworkPolicy specs of Kubernetes $(basename "$E2E_DIR" | sed 's/^bin-//') unmodified (e2e-netpol.test),"
	echo "  $PROCS e2e-netpol.test process(es) side by side, each \`--ginkgo.focus=<its cases joined with |>\`"
	echo "- Lab: 1 cluster x 2 nodes ($LAB_PREFIX); Patronus datapath setting: $datapath; commit $(git rev-parse --short HEAD)"
	echo "- sig-network basics (\`lab.sh smoke\`: pod-to-pod on one node and across nodes, pod to the kubernetes Service by DNS name): $([ $smoke_rc = 0 ] && echo pass || echo FAIL)"
	echo "- Result: $pass passed, $fail failed of ${#CASES[@]} ($ran; e2e-netpol.test exit ${rcs[*]})"
	echo "- Wall time: ${total}s in all (e2e-netpol.test cache ${t_build}s, lab up ${t_up}s, smoke ${t_smoke}s, cases ${t_e2e}s, teardown not counted)"
	echo
	cat "$OUT/table.md"
	echo
} >"$OUT/results.md"
cat "$OUT/results.md"
for rc in "${rcs[@]}"; do [ "$rc" = 0 ] || fail=$((fail + 1)); done
if [ $fail != 0 ]; then
	log "FAIL: see $OUT/e2e-N.log"
	grep -h -A3 '\[FAIL\]' "$OUT"/e2e-*.log | head -40 >&2 || true
	exit 1
fi
log "all ${#CASES[@]} cases passed in ${total}s"

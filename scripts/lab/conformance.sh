#!/usr/bin/env bash
# Runs upstream Kubernetes NetworkPolicy e2e cases (e2e.test of the lab's Kubernetes
# version, unmodified) against lab cluster 1 with Patronus as the CNI, one ginkgo run per
# case, and writes pass/fail and time per case to CONFORMANCE.md.
#
#   scripts/lab/conformance.sh            the representative subset below
#   CASES_FILE=f scripts/lab/conformance.sh   one "label|focus regex|skip regex" per line
#
# Brings a lab up (1 cluster; LAB_NODES nodes, default 2) if none is running, and leaves it
# up afterwards (make lab-down removes it). Environment: LAB_DIR, CONFORMANCE_OUT
# (default CONFORMANCE.md), E2E_TIMEOUT (per case, default 10m), DATAPATH (ebpf, nftables
# or both: set in patronus-config and the DaemonSet restarted first; default: unchanged).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
LAB_DIR=${LAB_DIR:-/var/tmp/patronus-lab}
OUT=${CONFORMANCE_OUT:-CONFORMANCE.md}
E2E_TIMEOUT=${E2E_TIMEOUT:-10m}

log() { echo "conformance: $(date +%H:%M:%S) $*" >&2; }

# label | ginkgo focus (regex on the full spec text) | ginkgo skip
default_cases() {
	cat <<'CASES'
default-deny-ingress (TCP)|Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy|UDP|SCTP
allow-all (TCP)|Netpol NetworkPolicy between server and client should support allow-all policy|UDP|SCTP
default-deny-all (TCP)|Netpol NetworkPolicy between server and client should support a 'default-deny-all' policy|UDP|SCTP
namespace selector (TCP)|Netpol NetworkPolicy between server and client should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector|UDP|SCTP
named port (TCP)|Netpol NetworkPolicy between server and client should allow ingress access on one named port|UDP|SCTP
egress deny in namespace (TCP)|Netpol NetworkPolicy between server and client should deny egress from all pods in a namespace|UDP|SCTP
ipBlock with except (TCP)|Netpol NetworkPolicy between server and client should enforce except clause while egress access to server in CIDR block|UDP|SCTP
policy update (TCP)|Netpol NetworkPolicy between server and client should enforce updated policy|UDP|SCTP
default-deny-ingress (UDP)|Netpol \[LinuxOnly\] NetworkPolicy between server and client using UDP should support a 'default-deny-ingress' policy|SCTP
CASES
}

if [ ! -f "$LAB_DIR/bin.env" ]; then
	log "no lab running; bringing one up (1 cluster)"
	LAB_CLUSTERS=1 LAB_NODES=${LAB_NODES:-2} ./scripts/lab/lab.sh up
fi
# shellcheck disable=SC1091
. "$LAB_DIR/bin.env"
[ -x "$LAB_BIN/e2e.test" ] || LAB_BIN=$(./scripts/lab/build.sh e2e.test)
cp_ns=${LAB_PREFIX:-plab}-c1-cp
kubeconfig=$LAB_DIR/c1/admin.kubeconfig
shape=$(cat "$LAB_DIR/shape")
if [ -n "${DATAPATH:-}" ]; then
	log "datapath $DATAPATH: patching patronus-config and restarting the DaemonSet"
	"$LAB_DIR/c1/kubectl" -n kube-system patch configmap patronus-config --type merge -p "{\"data\":{\"datapath\":\"$DATAPATH\"}}" >&2
	"$LAB_DIR/c1/kubectl" -n kube-system rollout restart daemonset/patronus-cni-daemon >&2
	"$LAB_DIR/c1/kubectl" -n kube-system rollout status daemonset/patronus-cni-daemon --timeout=180s >&2
fi
datapath=$("$LAB_DIR/c1/kubectl" -n kube-system get configmap patronus-config -o jsonpath='{.data.datapath}' 2>/dev/null || echo '?')

if [ -n "${CASES_FILE:-}" ]; then cases=$(cat "$CASES_FILE"); else cases=$(default_cases); fi
results=$(mktemp)
logs=$LAB_DIR/conformance
mkdir -p "$logs"
pass=0
fail=0
n=0
while IFS='|' read -r label focus skip; do
	[ -n "$label" ] || continue
	n=$((n + 1))
	log "[$n] $label"
	start=$(date +%s)
	rc=0
	# e2e.test runs in the control plane's network namespace: it reaches the API server,
	# and the probes are `kubectl exec` through it.
	nsenter --net="/run/netns/$cp_ns" -- "$LAB_BIN/e2e.test" \
		--provider=local --kubeconfig="$kubeconfig" --kubectl-path="$K8S_BIN/kubectl" \
		--ginkgo.focus="$focus" --ginkgo.skip="$skip" --ginkgo.timeout="$E2E_TIMEOUT" \
		--ginkgo.no-color --dump-logs-on-failure=false \
		>"$logs/case-$n.log" 2>&1 || rc=$?
	secs=$(( $(date +%s) - start ))
	ran=$(grep -Eo 'Ran [0-9]+ of [0-9]+ Specs' "$logs/case-$n.log" | tail -1 || true)
	if [ $rc = 0 ] && [ -n "$ran" ] && [ "${ran#Ran 0 }" = "$ran" ]; then
		res=pass
		pass=$((pass + 1))
	else
		res=FAIL
		fail=$((fail + 1))
		# The first lines that say why (reachability table or error).
		why=$(grep -E 'Reachability|expected|Error|error:|unexpected|Unexpected' "$logs/case-$n.log" | head -1 | cut -c1-140 | tr '|' '/' || true)
		[ -z "$why" ] || res="FAIL: $why"
		[ -n "$ran" ] || res="FAIL (no spec ran, rc $rc)"
	fi
	log "[$n] $label: $res (${secs}s)"
	printf '| %s | %s | %ss | `%s` |\n' "$label" "$res" "$secs" "$ran" >>"$results"
done <<<"$cases"

{
	if [ ! -f "$OUT" ]; then
		echo "# Conformance"
		echo
		echo "Upstream Kubernetes e2e results against the lab (scripts/lab/, docs/LAB.md) with"
		echo "Patronus installed from manifests/. Written by \`make conformance\`; newest run first."
		echo
	fi
} >"$OUT.new"
{
	echo "## NetworkPolicy e2e subset, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	how='make conformance'
	[ -z "${DATAPATH:-}${CASES_FILE:-}" ] || how="${DATAPATH:+DATAPATH=$DATAPATH }${CASES_FILE:+CASES_FILE=<3 cases> }scripts/lab/conformance.sh"
	echo "- Command: \`$how\` (scripts/lab/conformance.sh), e2e.test $(basename "$LAB_BIN" | sed "s/^bin-//") unmodified,"
	echo "  one run per case: \`e2e.test --provider=local --kubeconfig=... --kubectl-path=... --ginkgo.focus=<case>\`"
	echo "- Lab: $shape (cases run on cluster 1); Patronus datapath setting: $datapath; commit $(git rev-parse --short HEAD)"
	echo "- Result: $pass passed, $fail failed of $n. Logs: $logs/case-N.log (removed by make lab-down)"
	echo
	echo "| Case | Result | Time | Specs |"
	echo "|---|---|---|---|"
	cat "$results"
	echo
} >>"$OUT.new"
if [ -f "$OUT" ]; then
	# Keep the header (up to the first run section), put this run first.
	awk '/^## /{exit} {print}' "$OUT" >"$OUT.head"
	awk '/^## /{f=1} f' "$OUT" >"$OUT.tail"
	{ cat "$OUT.head"; cat "$OUT.new"; cat "$OUT.tail"; } >"$OUT.tmp"
	rm -f "$OUT.head" "$OUT.tail" "$OUT.new"
	mv "$OUT.tmp" "$OUT"
else
	mv "$OUT.new" "$OUT"
fi
rm -f "$results"
log "$pass passed, $fail failed of $n; written to $OUT"
[ $fail = 0 ]

#!/usr/bin/env bash
# `make conformance`: the upstream Kubernetes NetworkPolicy e2e suite (every Netpol spec of
# the lab's Kubernetes version, unmodified, in e2e-netpol.test: upstream's e2e suite with only
# the NetworkPolicy specs linked in, see scripts/lab/e2enetpol/) against lab cluster 1 with Patronus
# as the CNI, once per datapath, and writes pass/fail and time per case to CONFORMANCE.md.
# SCTP specs are listed as not runnable (this kernel has no SCTP for pods' traffic).
#
#   scripts/lab/conformance.sh                 the whole suite, datapaths ebpf then nftables
#   DATAPATH=ebpf scripts/lab/conformance.sh   one datapath (ebpf, nftables or both)
#   CASES_FILE=f scripts/lab/conformance.sh    only the specs matching one "label|focus regex"
#                                              per line (a third field, a skip regex, is ignored)
#
# The specs of a run are listed first (e2e-netpol.test --ginkgo.dry-run), then split over E2E_PROCS
# e2e-netpol.test processes side by side (default 3), each with a focus that names its specs (every
# Netpol spec's text is unique, none a prefix of another: checked with one dry run each).
# Brings a lab up (1 cluster; LAB_NODES nodes, default 2) if none is running in LAB_DIR, and
# leaves it up afterwards (make lab-down removes it). Environment: LAB_DIR, LAB_PREFIX,
# CONFORMANCE_OUT (default CONFORMANCE.md), E2E_TIMEOUT (per run, default 60m), E2E_PROCS.
# CI runs a 12-case subset on a lab of its own instead: scripts/lab/ci-conformance.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
# junit_testcases, junit_attr, junit_secs, xml_unescape, junit_result, junit_row.
# shellcheck source=../lib/common.sh
. scripts/lib/common.sh
LAB_DIR=${LAB_DIR:-/var/tmp/patronus-lab}
LAB_PREFIX=${LAB_PREFIX:-plab}
OUT=${CONFORMANCE_OUT:-CONFORMANCE.md}
E2E_TIMEOUT=${E2E_TIMEOUT:-60m}
PROCS=${E2E_PROCS:-3}
DATAPATHS=${DATAPATH:-ebpf nftables}

log() { echo "conformance: $(date +%H:%M:%S) $*" >&2; }

if [ ! -f "$LAB_DIR/bin.env" ]; then
	log "no lab running; bringing one up (1 cluster)"
	LAB_CLUSTERS=1 LAB_NODES=${LAB_NODES:-2} ./scripts/lab/lab.sh up
fi
# shellcheck disable=SC1091
. "$LAB_DIR/bin.env"
E2E_DIR=$(./scripts/lab/build.sh e2e-netpol.test)
cp_ns=$LAB_PREFIX-c1-cp
kc() { "$LAB_DIR/c1/kubectl" "$@"; }
shape=$(cat "$LAB_DIR/shape")
logs=$LAB_DIR/conformance
mkdir -p "$logs"

e2e() { # e2e ARGS...: in the control plane's netns (it reaches the API server; probes are kubectl exec)
	nsenter --net="/run/netns/$cp_ns" -- "$E2E_DIR/e2e-netpol.test" \
		--provider=local --kubeconfig="$LAB_DIR/c1/admin.kubeconfig" --kubectl-path="$K8S_BIN/kubectl" \
		--ginkgo.no-color --dump-logs-on-failure=false "$@"
}

# The specs to run: names from a dry run's junit report.
if [ -n "${CASES_FILE:-}" ]; then
	focus=$(cut -d'|' -f2 "$CASES_FILE" | sed '/^$/d' | paste -sd'|' -)
else
	focus='Netpol'
fi
e2e --ginkgo.dry-run --ginkgo.focus="$focus" --ginkgo.junit-report="$logs/dry.xml" >"$logs/dry.log" 2>&1
# A spec name's text becomes part of a ginkgo focus regex: &lt; and &gt; are decoded too
# (xml_unescape leaves them, for Markdown).
unescape() { xml_unescape | sed 's/&lt;/</g; s/&gt;/>/g'; }
specs() { # the names of the specs a dry run would run (status passed), one a line
	junit_testcases "$logs/dry.xml" | grep 'status="passed"' | sed -n 's/.*name="\[It\] \([^"]*\)".*/\1/p' | unescape
}
mapfile -t all < <(specs)
[ ${#all[@]} -gt 0 ] || { log "no spec matches $focus (see $logs/dry.log)"; exit 1; }
runnable=()
sctp=()
for s in "${all[@]}"; do
	# SCTPConnectivity specs send SCTP; the other specs naming SCTP only put it in a policy.
	case "$s" in *Feature:SCTPConnectivity*) sctp+=("$s") ;; *) runnable+=("$s") ;; esac
done
log "${#runnable[@]} specs to run, ${#sctp[@]} SCTP specs not runnable here"
quote() { sed 's/[][\.*^$()+?{}|]/\\&/g' <<<"$1"; }

results=$(mktemp)
total_fail=0
for dp in $DATAPATHS; do
	log "datapath $dp: patching patronus-config and restarting the DaemonSet"
	kc -n kube-system patch configmap patronus-config --type merge -p "{\"data\":{\"datapath\":\"$dp\"}}" >&2
	kc -n kube-system rollout restart daemonset/patronus-cni-daemon >&2
	kc -n kube-system rollout status daemonset/patronus-cni-daemon --timeout=180s >&2
	# Round robin over PROCS processes, each focus naming its specs exactly.
	declare -A f=()
	i=0
	for s in "${runnable[@]}"; do
		p=$((i % PROCS))
		# The junit name ends with the spec's labels, which are not part of its text.
		f[$p]="${f[$p]:+${f[$p]}|}$(quote "${s% \[*\]}")"
		i=$((i + 1))
	done
	t0=$(date +%s)
	pids=()
	for p in "${!f[@]}"; do
		rm -f "$logs/$dp-junit-$p.xml"
		e2e --ginkgo.focus="${f[$p]}" --ginkgo.timeout="$E2E_TIMEOUT" --ginkgo.junit-report="$logs/$dp-junit-$p.xml" \
			>"$logs/$dp-e2e-$p.log" 2>&1 &
		pids+=($!)
	done
	log "datapath $dp: ${#runnable[@]} specs in ${#pids[@]} e2e-netpol.test processes (logs $logs/$dp-e2e-N.log)"
	for pid in "${pids[@]}"; do wait "$pid" || true; done
	secs=$(( $(date +%s) - t0 ))
	unset f
	pass=0
	fail=0
	: >"$results.$dp"
	for s in "${runnable[@]}"; do
		line=$(junit_testcases "$logs/$dp"-junit-*.xml 2>/dev/null | unescape |
			grep -F "name=\"[It] $s\"" | grep -v 'status="skipped"' | head -1 || true)
		st=$(junit_attr status <<<"$line")
		t=$(junit_secs <<<"$line")
		res=$(junit_result "$st")
		if [ "$res" = pass ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
		name=${s#\[sig-network\] }
		name=${name% \[Feature:NetworkPolicy\]*}
		junit_row "$name" "$res" "$t" | sed 's/ *\[sig-network[^]]*\]//g' >>"$results.$dp"
	done
	for s in "${sctp[@]}"; do
		name=${s#\[sig-network\] }
		printf '| %s | not runnable: no SCTP on this kernel | - |\n' "${name% \[Feature:NetworkPolicy\]*}" >>"$results.$dp"
	done
	log "datapath $dp: $pass passed, $fail failed of ${#runnable[@]} in ${secs}s"
	total_fail=$((total_fail + fail))
	{
		echo "### Datapath $dp: $pass passed, $fail failed of ${#runnable[@]} (${#sctp[@]} SCTP not runnable), ${secs}s"
		echo
		junit_table_head Case
		cat "$results.$dp"
		echo
	} >>"$results"
	rm -f "$results.$dp"
done

{
	echo "## NetworkPolicy e2e suite, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	how='make conformance'
	[ -z "${DATAPATH:-}${CASES_FILE:-}" ] || how="${DATAPATH:+DATAPATH=$DATAPATH }${CASES_FILE:+CASES_FILE=<cases> }scripts/lab/conformance.sh"
	echo "- Command: \`$how\` (scripts/lab/conformance.sh), NetworkPolicy specs of Kubernetes $(basename "$E2E_DIR" | sed 's/^bin-//') unmodified (e2e-netpol.test),"
	echo "  specs listed by \`--ginkgo.dry-run --ginkgo.focus='$focus'\`, run in $PROCS e2e-netpol.test processes side by side"
	echo "- Lab: $shape (run on cluster 1); commit $(git rev-parse --short HEAD). Logs: $logs (removed by make lab-down)"
	echo
	cat "$results"
} >"$OUT.new"
rm -f "$results"
if [ -f "$OUT" ]; then
	# Keep the header (up to the first run section), put this run first.
	awk '/^## /{exit} {print}' "$OUT" >"$OUT.head"
	awk '/^## /{f=1} f' "$OUT" >"$OUT.tail"
	{ cat "$OUT.head"; cat "$OUT.new"; cat "$OUT.tail"; } >"$OUT.tmp"
	rm -f "$OUT.head" "$OUT.tail" "$OUT.new"
	mv "$OUT.tmp" "$OUT"
else
	{ printf '# Conformance\n\n'; cat "$OUT.new"; } >"$OUT"
	rm -f "$OUT.new"
fi
log "written to $OUT"
[ $total_fail = 0 ]

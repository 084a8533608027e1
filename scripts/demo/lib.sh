# shellcheck shell=bash
# Functions for the demo's scenario files (scripts/demo/NN-<name>.sh). scripts/demo.sh
# sources this file, then each scenario file in order, each in its own subshell with
# `set -euo pipefail`: a command that fails ends that scenario only (demo.sh reports it as
# failed and goes on with the next one). Variables a scenario sets do not reach the next.
#
# A scenario file is a plain bash fragment, e.g.:
#
#   scenario "Pods on both nodes get IPs"
#   run_pod 1 1 demo a busybox
#   ok "pod a: $(pod_ip 1 demo a)"
#   agent_has 1 1 members || { skipped "patronus members is not built"; return 0; }
#
# A scenario that cannot run prints `skipped WHY` and returns 0; it never fakes output.
#
# Against another lab (your own LAB_PREFIX/LAB_DIR, brought up with scripts/lab/lab.sh):
#   LAB_PREFIX=x LAB_DIR=/var/tmp/patronus-lab-x ./scripts/demo.sh run scripts/demo/30-policy.sh
#
# The lab (docs/LAB.md): cluster C (1..DEMO_CLUSTERS), node I (1..DEMO_NODES) is the
# Kubernetes node "cC-nI" in network namespace "$LAB_PREFIX-cC-nI", underlay address
# 10.77.C.(10+I); pods 10.(243+C).0.0/16; Services 10.96.0.0/12, DNS 10.96.0.10.
#
# Functions (C = cluster number, I = node number, NODE = node number or name):
#   scenario TITLE                 start a scenario: prints its title
#   ok MSG | skipped WHY | note MSG    a result line (note: plain information)
#   fail MSG                       print MSG and end the scenario as failed
#   show CMD...                    print "$ CMD" and run it, output indented
#   kc C ARGS...                   kubectl against cluster C (admin)
#   node_exec C I CMD...           CMD inside node cC-nI (its network and mount namespaces)
#   agent C I ARGS...              `patronus ARGS` in the Patronus agent pod of node cC-nI
#   agent_pod C I                  that pod's name (namespace kube-system)
#   agent_has C I SUBCOMMAND...    true if the agent's patronus has that (sub)command
#   patronus ARGS...               the host's bin/patronus (offline commands: policy matrix...)
#   wait_for DESC SECONDS CMD...   retry CMD (quietly) until it succeeds; on timeout print
#                                  "DESC: not after SECONDS s" and return 1
#   run_pod C NODE NS NAME IMAGE [LABELS] [-- ARGS...]
#                                  a pod pinned to node NODE in namespace NS (created if
#                                  missing; an old pod of that name is replaced), waits until
#                                  Ready. IMAGE: busybox (sleeps), agnhost (netexec: HTTP
#                                  :8080 /hostname /echo, UDP :8081), or a full reference.
#                                  LABELS: k=v[,k=v]. ARGS replace the default (for busybox
#                                  they are the command, e.g. -- sh -c 'nc -lk -p 80 -e echo hi').
#   pod_ip C NS POD                the pod's IP
#   pod_exec C NS POD CMD...       kubectl exec in the pod's (first) container
#   ns_fresh C NS [LABELS]         delete namespace NS if present, create it (labels k=v,...)
#   need_clusters N                true if the lab has at least N clusters (else skipped)
#   need_nodes N                   true if each cluster has at least N nodes (else skipped)
#   node_name C I / node_ip C I / node_netns C I    cC-nI, 10.77.C.(10+I), $LAB_PREFIX-cC-nI
#
# Variables: LAB_DIR, LAB_PREFIX, DEMO_CLUSTERS, DEMO_NODES, DEMO_ROOT (the repository),
# BUSYBOX_IMAGE, AGNHOST_IMAGE, PATRONUS_BIN.

LAB_DIR=${LAB_DIR:-/var/tmp/patronus-lab}
LAB_PREFIX=${LAB_PREFIX:-plab}
DEMO_ROOT=${DEMO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PATRONUS_BIN=${PATRONUS_BIN:-$DEMO_ROOT/bin/patronus}
BUSYBOX_IMAGE=registry.k8s.io/e2e-test-images/busybox:1.37.0-2
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.66.1
# Where ok/skipped/fail lines are counted for demo.sh's summary (optional).
DEMO_RESULTS=${DEMO_RESULTS:-/dev/null}
DEMO_SHOWN=${DEMO_SHOWN:-/dev/null}
DEMO_CLUSTERS=0
DEMO_NODES=0
if [ -f "$LAB_DIR/shape" ]; then
	DEMO_CLUSTERS=$(sed -n 's/.*CLUSTERS=\([0-9]*\).*/\1/p' "$LAB_DIR/shape")
	DEMO_NODES=$(sed -n 's/.*NODES=\([0-9]*\).*/\1/p' "$LAB_DIR/shape")
fi

if [ -t 1 ]; then
	_B=$'\e[1m' _G=$'\e[32m' _Y=$'\e[33m' _R=$'\e[31m' _N=$'\e[0m'
else
	_B='' _G='' _Y='' _R='' _N=''
fi

scenario() { printf '\n%s=== %s ===%s\n' "$_B" "$*" "$_N"; }
ok() { printf '  %s✓%s %s\n' "$_G" "$_N" "$*"; echo ok >>"$DEMO_RESULTS"; }
skipped() { printf '  %sskipped: %s%s\n' "$_Y" "$*" "$_N"; echo skipped >>"$DEMO_RESULTS"; }
note() { printf '    %s\n' "$*"; }
fail() { printf '  %s✗ %s%s\n' "$_R" "$*" "$_N"; echo failed >>"$DEMO_RESULTS"; exit 1; }
indent() { sed 's/^/    /'; }
show() {
	printf '    %s$ %s%s\n' "$_B" "$*" "$_N"
	"$@" 2>&1 | sed 's/^/      /'
	return "${PIPESTATUS[0]}"
}

node_name() { echo "c$1-n$2"; }
node_ip() { echo "10.77.$1.$((10 + $2))"; }
node_netns() { echo "$LAB_PREFIX-c$1-n$2"; }
# _node C NODE: NODE as a name (a number I becomes cC-nI).
_node() { case "$2" in *[!0-9]*) echo "$2" ;; *) node_name "$1" "$2" ;; esac; }

kc() {
	local c=$1
	shift
	[ -x "$LAB_DIR/c$c/kubectl" ] || { echo "no cluster $c in $LAB_DIR" >&2; return 1; }
	"$LAB_DIR/c$c/kubectl" "$@"
}

node_exec() {
	local c=$1 i=$2 pid
	shift 2
	pid=$(cat "$LAB_DIR/c$c/n$i/containerd/containerd.pid") || return 1
	nsenter --net="/run/netns/$(node_netns "$c" "$i")" --mount="/proc/$pid/ns/mnt" -- "$@"
}

agent_pod() {
	kc "$1" -n kube-system get pods -l app.kubernetes.io/name=patronus \
		--field-selector "spec.nodeName=$(node_name "$1" "$2")" \
		-o jsonpath='{.items[0].metadata.name}'
}

_agent_exec() {
	local c=$1 i=$2 pod
	shift 2
	pod=$(agent_pod "$c" "$i") || return 1
	[ -n "$pod" ] || { echo "no Patronus agent pod on $(node_name "$c" "$i")" >&2; return 1; }
	kc "$c" -n kube-system exec "$pod" -c daemon -- patronus "$@"
}

# agent also notes the subcommand in DEMO_SHOWN when it succeeds: demo.sh's summary counts
# `patronus members`, `paths` and `status` as shown by whichever scenario ran them.
agent() {
	_agent_exec "$@" || return $?
	echo "$3" >>"$DEMO_SHOWN"
}

agent_has() {
	local c=$1 i=$2
	shift 2
	_agent_exec "$c" "$i" "$@" --help >/dev/null 2>&1 || return 1
	# cobra prints the parent's help for an unknown subcommand of a command with children
	# and exits 0; a real subcommand's help names it in its usage line.
	_agent_exec "$c" "$i" "$@" --help 2>/dev/null | grep -q "patronus $*"
}

patronus() { "$PATRONUS_BIN" "$@"; }

wait_for() {
	local what=$1 secs=$2 deadline
	shift 2
	deadline=$(($(date +%s) + secs))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.5
	done
	echo "$what: not after ${secs}s" >&2
	return 1
}

ns_fresh() {
	local c=$1 ns=$2 labels=${3:-}
	kc "$c" delete namespace "$ns" --ignore-not-found --wait=true --timeout=120s >/dev/null
	kc "$c" create namespace "$ns" >/dev/null
	[ -z "$labels" ] || kc "$c" label namespace "$ns" --overwrite ${labels//,/ } >/dev/null
}

run_pod() {
	local c=$1 node ns=$3 name=$4 image=$5 labels=${6:-} args=() cmd=()
	node=$(_node "$1" "$2")
	shift 5
	[ $# = 0 ] || [ "$1" = -- ] || { labels=$1; shift; }
	[ "${1:-}" != -- ] || { shift; args=("$@"); }
	case "$image" in
	# The busybox image's entrypoint is /bin/sh: ARGS are the command.
	busybox) image=$BUSYBOX_IMAGE; cmd=(--command); [ ${#args[@]} -gt 0 ] || args=(sleep 86400) ;;
	agnhost) image=$AGNHOST_IMAGE; [ ${#args[@]} -gt 0 ] || args=(netexec --http-port=8080 --udp-port=8081) ;;
	esac
	kc "$c" get namespace "$ns" >/dev/null 2>&1 || kc "$c" create namespace "$ns" >/dev/null
	kc "$c" -n "$ns" delete pod "$name" --ignore-not-found --wait=true --grace-period=1 >/dev/null
	local lab=()
	[ -z "$labels" ] || lab=(--labels="$labels")
	kc "$c" -n "$ns" run "$name" --image="$image" --image-pull-policy=IfNotPresent --restart=Never \
		"${lab[@]}" --overrides="{\"spec\":{\"nodeName\":\"$node\",\"terminationGracePeriodSeconds\":1}}" \
		"${cmd[@]}" -- "${args[@]}" >/dev/null
	kc "$c" -n "$ns" wait --for=condition=Ready "pod/$name" --timeout=120s >/dev/null || {
		echo "pod $ns/$name on $node not Ready after 120s:" >&2
		kc "$c" -n "$ns" describe pod "$name" | tail -15 >&2
		return 1
	}
}

pod_ip() { kc "$1" -n "$2" get pod "$3" -o jsonpath='{.status.podIP}'; }

pod_exec() {
	local c=$1 ns=$2 pod=$3
	shift 3
	kc "$c" -n "$ns" exec "$pod" -- "$@"
}

need_clusters() {
	[ "$DEMO_CLUSTERS" -ge "$1" ] && return 0
	skipped "needs $1 clusters, the lab has $DEMO_CLUSTERS (LAB_CLUSTERS=$1 make demo)"
	return 1
}

need_nodes() {
	[ "$DEMO_NODES" -ge "$1" ] && return 0
	skipped "needs $1 nodes per cluster, the lab has $DEMO_NODES (LAB_NODES=$1 make demo)"
	return 1
}

#!/usr/bin/env bash
# The Patronus demo (`make demo`): the Kubernetes lab (scripts/lab/lab.sh, docs/LAB.md) with
# Patronus installed as a DaemonSet from manifests/, then the scenario files
# scripts/demo/[0-9][0-9]-*.sh one after another (docs/DEMO.md). The lab keeps running
# afterwards; `make demo-down` removes it.
#
#   ./scripts/demo.sh              install what is missing, bring up a fresh lab
#                                  (LAB_CLUSTERS x LAB_NODES, default 2 x 2), run every scenario
#   ./scripts/demo.sh --teardown   the same, then remove the lab
#   ./scripts/demo.sh run [FILE...]  only the scenarios (all, or the FILEs) against the running lab
#   ./scripts/demo.sh down         remove the lab (scripts/lab/lab.sh down)
#
# Environment: LAB_PREFIX and LAB_DIR (default plab, /var/tmp/patronus-lab: the demo's lab;
# set both to run the demo on a lab of your own), LAB_CLUSTERS, LAB_NODES.
# Scenario files source scripts/demo/lib.sh (its header documents the functions). Exit status:
# non-zero if a scenario failed (the lab is left up to look at).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export LAB_DIR=${LAB_DIR:-/var/tmp/patronus-lab}
export LAB_PREFIX=${LAB_PREFIX:-plab}
export LAB_CLUSTERS=${LAB_CLUSTERS:-2}
export LAB_NODES=${LAB_NODES:-2}
export DEMO_ROOT=$ROOT

# The seed's scenarios (design card): the file that shows each, or the `agent` subcommand
# (lib.sh notes each one that succeeded, whichever file ran it); the summary names those
# shown nowhere.
SEED=(
	"10-pods.sh||pods getting IPs"
	"30-policy.sh||the backend-policy allowing and denying"
	"40-crosscluster.sh|members|patronus members"
	"40-crosscluster.sh||the cross-cluster ping"
	"45-paths.sh|paths|patronus paths and a failover"
	"50-mcs.sh||a clusterset.local call"
	"90-status.sh|status|patronus status on a node"
)

if [ -t 1 ]; then B=$'\e[1m' Y=$'\e[33m' R=$'\e[31m' N=$'\e[0m'; else B='' Y='' R='' N=''; fi
step() { printf '%s==>%s %s\n' "$B" "$N" "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
lab() { ./scripts/lab/lab.sh "$@"; }
envp() { [ "$LAB_PREFIX" = plab ] && [ "$LAB_DIR" = /var/tmp/patronus-lab ] || printf 'LAB_PREFIX=%s LAB_DIR=%s ' "$LAB_PREFIX" "$LAB_DIR"; }

# run_scenarios FILE...: each file in a subshell with lib.sh; a line per file at the end.
run_scenarios() {
	local f rc res summary=() failed=0 t0
	local results
	results=$(mktemp -d)
	export DEMO_SHOWN=$results/shown
	: >"$DEMO_SHOWN"
	for f in "$@"; do
		t0=$SECONDS
		rc=0
		(
			set -euo pipefail
			export DEMO_RESULTS=$results/$(basename "$f")
			: >"$DEMO_RESULTS"
			# shellcheck disable=SC1091
			. "$ROOT/scripts/demo/lib.sh"
			# shellcheck disable=SC1090
			. "$f"
		) || rc=$?
		local r=$results/$(basename "$f") nok nsk
		nok=$(grep -c '^ok$' "$r" 2>/dev/null || true)
		nsk=$(grep -c '^skipped$' "$r" 2>/dev/null || true)
		if [ "$rc" != 0 ]; then
			res="${R}FAILED${N} (exit $rc; $nok ok before it)"
			failed=$((failed + 1))
			printf '  %s✗ scenario %s failed (exit %s)%s\n' "$R" "$(basename "$f")" "$rc" "$N"
		elif [ "$nok" = 0 ] && [ "$nsk" != 0 ]; then
			res="${Y}skipped${N}"
		else
			res="$nok ok"
			[ "$nsk" = 0 ] || res="$nok ok, $nsk skipped"
		fi
		summary+=("$(printf '  %-22s %s (%ss)' "$(basename "$f")" "$res" $((SECONDS - t0)))")
	done
	printf '\n%s=== Summary ===%s\n' "$B" "$N"
	printf '%s\n' "${summary[@]}"
	local s file sub what missing=0
	for s in "${SEED[@]}"; do
		IFS='|' read -r file sub what <<<"$s"
		if [ -n "$sub" ] && grep -qx "$sub" "$DEMO_SHOWN"; then continue; fi
		if [ ! -f "scripts/demo/$file" ]; then
			[ $missing = 1 ] || echo "  The seed's scenarios not in the demo yet:"
			missing=1
			printf '  %snot built yet: %s (no scripts/demo/%s)%s\n' "$Y" "$what" "$file" "$N"
		fi
	done
	rm -rf "$results"
	[ $failed = 0 ]
}

down() {
	step "removing the lab in $LAB_DIR (scripts/lab/lab.sh down)"
	lab down 2>&1 | sed 's/^/    /'
}

up() {
	[ "$(id -u)" = 0 ] || die "run as root: the lab makes network namespaces, mounts and cgroups"
	step "installing Debian packages if missing (scripts/deps.sh: containerd, runc, nftables, ...)"
	./scripts/deps.sh
	command -v curl >/dev/null || { apt-get install -y --no-install-recommends curl >/dev/null || die "curl is missing"; }
	if [ -e "$LAB_DIR" ]; then
		step "a lab is already in $LAB_DIR: removing it first (fresh demo)"
		down
	fi
	step "bringing up the lab: $LAB_CLUSTERS cluster(s) x $LAB_NODES node(s), Patronus from manifests/ (first run builds Kubernetes: tens of minutes; later about 2 min)"
	local t0=$SECONDS
	if ! lab up 2>&1 | sed 's/^/    /'; then
		die "lab bring-up failed (logs in $LAB_DIR; remove with: $(envp)make demo-down)"
	fi
	step "lab up in $((SECONDS - t0))s"
	local c
	for c in $(seq 1 "$LAB_CLUSTERS"); do
		echo "    cluster $c:"
		"$LAB_DIR/c$c/kubectl" -n kube-system get pods -l app.kubernetes.io/name=patronus -o wide 2>&1 | sed 's/^/      /'
	done
}

look_around() {
	local p
	p=$(envp)
	cat <<EOF

${B}The lab keeps running.${N} Look around:
  ${p}scripts/lab/lab.sh status                          nodes and pods of every cluster
  ${p}scripts/lab/lab.sh kubectl 1 get pods -A -o wide   kubectl on cluster 1 (2, ...)
  ${p}scripts/lab/lab.sh exec 1 2 ip -br addr            a command inside node c1-n2
  ${p}scripts/lab/lab.sh kubectl 1 -n kube-system exec ds/patronus-cni-daemon -c daemon -- patronus status
  ${p}scripts/demo.sh run scripts/demo/10-pods.sh        run a scenario again
  logs: $LAB_DIR/c*/logs (control plane), $LAB_DIR/c*/n*/kubelet.log
Remove it with: ${p}make demo-down   (= scripts/demo.sh down = scripts/lab/lab.sh down)
EOF
}

main() {
	local teardown=0
	case "${1:-}" in
	down) [ "$(id -u)" = 0 ] || die "run as root"; down; return 0 ;;
	run)
		shift
		[ -f "$LAB_DIR/shape" ] || die "no lab in $LAB_DIR (make demo, or scripts/lab/lab.sh up)"
		[ $# -gt 0 ] || set -- scripts/demo/[0-9][0-9]-*.sh
		run_scenarios "$@"
		return
		;;
	--teardown) teardown=1 ;;
	"") ;;
	*) die "usage: $0 [--teardown | run [FILE...] | down]" ;;
	esac
	local start=$SECONDS rc=0
	up
	local files=()
	for f in scripts/demo/[0-9][0-9]-*.sh; do [ -f "$f" ] && files+=("$f"); done
	step "running ${#files[@]} scenario file(s): ${files[*]##*/}"
	run_scenarios "${files[@]}" || rc=$?
	echo
	echo "demo ran in $((SECONDS - start))s"
	if [ $teardown = 1 ]; then
		down
	else
		look_around
	fi
	return $rc
}

main "$@"

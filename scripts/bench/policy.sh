#!/usr/bin/env bash
# NetworkPolicy datapath benchmark: iperf3 TCP throughput and 64-byte UDP packet rate
# between two pods (netns on a bridge in a node netns) with 1,000 rules installed per
# direction (the destination ingress-isolated, the source egress-isolated, the matching
# rule last), for: no policy, eBPF, nftables linear chain (with the conntrack shortcut
# the nftables layer uses, and walked by every packet), nftables sets. Bridge
# netfilter (needed by the nftables layer to see bridged traffic) is measured both off and
# on, so each datapath is compared with the baseline it really runs on.
#
# Besides throughput, the CPU iperf3 uses to carry TCP at a fixed 1 Gbit/s: less sensitive
# to a shared machine's load than the rate itself.
#
# Usage: sudo scripts/bench/policy.sh [seconds per iperf3 run, default 5] [rules, default 1000] [rounds, default 3]
# BASE_POLICYLOAD=<policyload built from an earlier commit> adds "eBPF, base" rows measured
# in the same rounds (a change to the BPF programs against the programs before it).
# Every configuration is measured once per round, rounds interleaved, medians reported:
# the machine is shared and single runs vary by tens of percent.
# Needs: root, iperf3, jq, nftables (scripts/deps.sh). Touches only its own namespaces
# and a private bpffs mount.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
RULES=${2:-1000}
ROUNDS=${3:-3}
ID=$(printf '%04x' $((RANDOM)))
N=ptb-$ID-n A=ptb-$ID-a B=ptb-$ID-b
PIN=$(mktemp -d)
BIN=$(mktemp -d)/policyload

cleanup() {
	ip netns pids "$B" 2>/dev/null | xargs -r kill 2>/dev/null || true
	for ns in "$A" "$B" "$N"; do ip netns del "$ns" 2>/dev/null || true; done
	umount "$PIN" 2>/dev/null || true
	rm -rf "$PIN" "$(dirname "$BIN")" "${RES:-}"
}
trap cleanup EXIT

go build -o "$BIN" ./scripts/bench/policyload

setup() {
	for ns in "$N" "$A" "$B"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
	ip -n "$N" link add br0 type bridge
	ip -n "$N" addr add 10.251.0.1/24 dev br0
	ip -n "$N" link set br0 up
	local i=11
	for p in a b; do
		local ns=$A; [ $p = b ] && ns=$B
		ip -n "$N" link add "ptb${ID}$p" type veth peer name eth0 netns "$ns"
		ip -n "$N" link set "ptb${ID}$p" master br0 up
		ip -n "$ns" addr add 10.251.0.$i/24 dev eth0
		ip -n "$ns" link set eth0 up
		i=$((i + 1))
	done
	ip netns exec "$N" sysctl -qw net.bridge.bridge-nf-call-iptables=0
	ip netns exec "$B" iperf3 -s -D -1 >/dev/null 2>&1 || true
}

teardown() {
	ip netns pids "$B" 2>/dev/null | xargs -r kill 2>/dev/null || true
	for ns in "$A" "$B" "$N"; do ip netns del "$ns" 2>/dev/null || true; done
	umount "$PIN" 2>/dev/null || true
	sleep 0.5
}

iperf() { # args...: one client run against a fresh one-shot server
	ip netns pids "$B" | xargs -r kill 2>/dev/null || true
	sleep 0.2
	ip netns exec "$B" iperf3 -s -1 -D >/dev/null
	sleep 0.3
	ip netns exec "$A" iperf3 -c 10.251.0.12 -t "$SECS" -J "$@"
}

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

RES=$(mktemp)
measure() { # config index: appends "round idx tcp sent recv" to $RES
	local tcp j cpu
	tcp=$(iperf -O 1 | jq '.end.sum_received.bits_per_second / 1e9')
	j=$(iperf -u -b 0 -l 64)
	# CPU cost at a fixed TCP rate the loaded machine sustains (1 Gbit/s): iperf3's own
	# CPU use (user + system, which carries the veth, bridge, TC and netfilter work done in
	# the sender's and receiver's context), client + server, in % of one CPU.
	cpu=$(iperf -O 1 -b 1G | jq '.end.cpu_utilization_percent.host_total + .end.cpu_utilization_percent.remote_total')
	echo "$ROUND $1 $tcp $(jq '.end.sum.packets / .end.sum.seconds / 1e3' <<<"$j") $(jq '(.end.sum.packets - .end.sum.lost_packets) / .end.sum.seconds / 1e3' <<<"$j") $cpu" >>"$RES"
}

run() { # index brnf mode
	setup
	ip netns exec "$N" sysctl -qw net.bridge.bridge-nf-call-iptables="$2"
	case "$3" in
	none) ;;
	ebpf | ebpf-base)
		mount -t bpf bpf "$PIN"
		local bin=$BIN
		[ "$3" = ebpf ] || bin=$BASE_POLICYLOAD
		"$bin" -mode ebpf -pin "$PIN/patronus" -netns "/var/run/netns/$N" -rules "$RULES" \
			-src "10.251.0.11,ptb${ID}a" -dst "10.251.0.12,ptb${ID}b" 2>/dev/null
		;;
	*)
		"$BIN" -mode "$3" -netns "/var/run/netns/$N" -rules "$RULES" \
			-src "10.251.0.11,ptb${ID}a" -dst "10.251.0.12,ptb${ID}b" 2>/dev/null
		;;
	esac
	measure "$1"
	teardown
}

LABELS=("no policy (bridge-nf off)" "eBPF (bridge-nf off)" "no policy (bridge-nf on)" "eBPF (bridge-nf on)"
	"nftables linear chain (bridge-nf on)" "nftables linear chain, every packet (bridge-nf on)" "nftables sets (bridge-nf on)")
BRNF=(0 0 1 1 1 1 1)
MODES=(none ebpf none ebpf nft-linear nft-linear-every-packet nft-sets)
if [ -n "${BASE_POLICYLOAD:-}" ]; then
	LABELS+=("eBPF, base (bridge-nf off)" "eBPF, base (bridge-nf on)")
	BRNF+=(0 1)
	MODES+=(ebpf-base ebpf-base)
fi

echo "policy datapath benchmark: $RULES rules per direction, ${SECS}s per iperf3 run, $ROUNDS interleaved rounds (median), $(nproc) CPUs, kernel $(uname -r)"
for ROUND in $(seq "$ROUNDS"); do
	for i in "${!MODES[@]}"; do
		run "$i" "${BRNF[$i]}" "${MODES[$i]}"
	done
	echo "round $ROUND done" >&2
done
echo
echo "| datapath | TCP Gbit/s | UDP 64 B sent kpps | UDP 64 B received kpps | CPU % at TCP 1 Gbit/s |"
echo "|---|---:|---:|---:|---:|"
for i in "${!MODES[@]}"; do
	col() { awk -v i="$i" -v c="$1" '$2 == i {print $c}' "$RES" | median; }
	printf '| %s | %.2f | %.0f | %.0f | %.1f |\n' "${LABELS[$i]}" "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)"
done
# Ratios within a round (configurations measured minutes apart at most) cancel much of
# the slow drift of a shared machine's load: median and range over the rounds.
ratio() { # label numerator-index denominator-index column
	local v
	v=$(awk -v a="$2" -v b="$3" -v c="$4" '$2 == a {x[$1] = $c} $2 == b {y[$1] = $c}
		END {for (r in x) if (y[r] > 0) print x[r] / y[r]}' "$RES" | sort -n)
	printf '| %s | %.2f | %.2f–%.2f |\n' "$1" "$(median <<<"$v")" "$(head -1 <<<"$v")" "$(tail -1 <<<"$v")"
}
echo
echo "| ratio, same round | median | range |"
echo "|---|---:|---:|"
ratio "TCP: eBPF / no policy (bridge-nf off)" 1 0 3
ratio "TCP: eBPF / no policy (bridge-nf on)" 3 2 3
ratio "CPU at TCP 1 Gbit/s: eBPF / no policy (bridge-nf off)" 1 0 6
ratio "CPU at TCP 1 Gbit/s: eBPF / no policy (bridge-nf on)" 3 2 6
ratio "UDP 64 B sent: eBPF / no policy (bridge-nf off)" 1 0 4
ratio "UDP 64 B sent: eBPF / linear chain, every packet" 3 5 4
ratio "UDP 64 B received: eBPF / linear chain, every packet" 3 5 5
ratio "UDP 64 B sent: eBPF / linear chain behind ct established" 3 4 4
ratio "UDP 64 B received: eBPF / linear chain behind ct established" 3 4 5
# The eBPF datapath alone needs no bridge netfilter; the nftables layer does.
ratio "UDP 64 B sent: eBPF (bridge-nf off) / linear chain behind ct established (on)" 1 4 4
ratio "UDP 64 B received: eBPF (bridge-nf off) / linear chain behind ct established (on)" 1 4 5
if [ -n "${BASE_POLICYLOAD:-}" ]; then
	ratio "UDP 64 B sent: eBPF / eBPF, base (bridge-nf off)" 1 7 4
	ratio "UDP 64 B received: eBPF / eBPF, base (bridge-nf off)" 1 7 5
	ratio "UDP 64 B sent: eBPF / eBPF, base (bridge-nf on)" 3 8 4
	ratio "UDP 64 B received: eBPF / eBPF, base (bridge-nf on)" 3 8 5
	ratio "UDP 64 B sent: eBPF, base / linear chain behind ct established" 8 4 4
	ratio "CPU at TCP 1 Gbit/s: eBPF / eBPF, base (bridge-nf off)" 1 7 6
fi

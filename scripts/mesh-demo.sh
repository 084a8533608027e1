#!/usr/bin/env bash
# Mesh demo (issue 5): N gateway agents (default 4), each in its own network namespace on
# one bridge, started with no peer addresses at all. They find each other by signed
# multicast beacons, gossip over Serf, and `patronus members` shows them. A fifth agent of
# another cluster, whose key nobody pinned, sits on the same LAN and is not admitted.
#
#   ./scripts/mesh-demo.sh [N]     start (needs root; builds bin/patronus if missing)
#   ./scripts/mesh-demo.sh down    stop agents, remove namespaces and state
#
# State: /tmp/patronus-mesh-demo (PATRONUS_MESH_DEMO_DIR). Namespaces patronus-md-*.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${PATRONUS_MESH_DEMO_DIR:-/tmp/patronus-mesh-demo}
BIN=${PATRONUS_BIN:-$PWD/bin/patronus}
BR=patronus-md-br

down() {
	if [ -d "$DIR" ]; then
		pids=()
		for p in "$DIR"/*.pid; do
			[ -e "$p" ] || continue
			pids+=("$(cat "$p")")
		done
		if [ ${#pids[@]} -gt 0 ]; then
			kill "${pids[@]}" 2>/dev/null || true
			# A graceful leave takes a few seconds; then force.
			for _ in $(seq 1 40); do
				alive=0
				for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
				[ $alive = 0 ] && break
				sleep 0.25
			done
			kill -9 "${pids[@]}" 2>/dev/null || true
		fi
	fi
	for ns in $(ip netns list | awk '/^patronus-md-/ {print $1}'); do ip netns del "$ns"; done
	rm -rf "$DIR"
}

if [ "${1:-}" = down ]; then
	down
	exit 0
fi
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
N=${1:-4}
[ -x "$BIN" ] || { mkdir -p bin && CGO_ENABLED=0 go build -o "$BIN" .; }
down
mkdir -p "$DIR"

ip netns add $BR
ip -n $BR link add br0 type bridge mcast_snooping 0
ip -n $BR link set br0 up

host() { # host N NAME -> netns with eth0 10.88.0.N/24 on the bridge
	local ns=patronus-md-$2
	ip netns add "$ns"
	ip -n $BR link add "p$1" type veth peer name eth0 netns "$ns"
	ip -n $BR link set "p$1" master br0 up
	ip -n "$ns" link set lo up
	ip -n "$ns" link set eth0 multicast on up
	ip -n "$ns" addr add "10.88.0.$1/24" dev eth0
}

agent() { # agent N NAME CLUSTER KEYFILE
	host "$1" "$2"
	ip netns exec "patronus-md-$2" "$BIN" mesh run --node-name "$2" --cluster-id "$3" \
		--cluster-key "$4" --cluster-cidr 10.244.0.0/16 --announce "10.244.$1.0/24" \
		--multicast-iface eth0 --beacon-interval 1s --socket "$DIR/$2.sock" --log-format text \
		--event-handler "member-join,member-leave,member-failed=echo \"\$(date +%T) \$SERF_SELF_NAME: \$SERF_EVENT \$(cut -f1 | tr '\n' ' ')\" >> $DIR/events.log" \
		>"$DIR/$2.log" 2>&1 &
	echo $! >"$DIR/$2.pid"
}

"$BIN" mesh keygen --out "$DIR/east.key" >"$DIR/east.pub"
"$BIN" mesh keygen --out "$DIR/north.key" >/dev/null
for i in $(seq 1 "$N"); do agent "$i" "gw-$i" east "$DIR/east.key"; done
agent 99 intruder north "$DIR/north.key"

echo "waiting for $N agents to find each other (no addresses configured, multicast only)..."
for _ in $(seq 1 60); do
	n=$("$BIN" members --socket "$DIR/gw-1.sock" --status alive -o json 2>/dev/null | grep -c '"name"' || true)
	[ "$n" = "$N" ] && break
	sleep 0.5
done
echo
echo "\$ patronus members --socket $DIR/gw-1.sock"
"$BIN" members --socket "$DIR/gw-1.sock"
echo
for _ in $(seq 1 40); do [ -S "$DIR/intruder.sock" ] && break; sleep 0.25; done
echo "\$ patronus members --socket $DIR/intruder.sock    # cluster north, key not pinned by east"
"$BIN" members --socket "$DIR/intruder.sock" || true
echo
echo "cluster east public key (pin it in another cluster's remote-clusters): $(cat "$DIR/east.pub")"
echo "try: $BIN event --socket $DIR/gw-2.sock deploy v1; kill \$(cat $DIR/gw-3.pid); cat $DIR/events.log"
echo "stop: $0 down"

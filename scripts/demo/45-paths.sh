# shellcheck shell=bash
# Path selection between clusters 1 and 2 (issue 7): the lab joins their gateways (node 1)
# by two WAN links through `patronus wanem` relays; the gateway agent of cluster 1 probes a
# path over each (`patronus paths`). A pod in cluster 1 pings a pod in cluster 2 every
# 50 ms; blackhole the link the best-effort class uses and print how long the selection
# took to move (the agent's own log timestamps) and the longest gap in the ping replies
# (the gateways' one WireGuard tunnel follows the default class's path: both gateways
# point their peer at the endpoint of their selected path), then lift it.
# Sourced by scripts/demo.sh with scripts/demo/lib.sh.
scenario "Two WAN paths between clusters 1 and 2: patronus paths, blackhole the active one"
need_clusters 2 || return 0
[ -f "$LAB_DIR/wan/links" ] || { skipped "the lab has no WAN links between its clusters (scripts/lab/lab.sh wan_up)"; return 0; }
agent_has 1 1 paths || { skipped "patronus paths is not in this build"; return 0; }

paths_json() { agent 1 1 paths -o json 2>/dev/null; }
# Paths to cluster 2 that are up.
up_count() { paths_json | jq '[.paths[] | select(.dst == "lab-c2" and .state == "up")] | length'; }
two_up() { [ "$(up_count)" -ge 2 ]; }
if ! wait_for "two paths from cluster 1 to cluster 2 up" 90 two_up; then
	n=$(up_count || echo 0)
	if [ "${n:-0}" -lt 2 ]; then
		show agent 1 1 paths || true
		skipped "cluster 1's agent has ${n:-0} path(s) up to cluster 2, not two (remote-clusters paths, WAN link 2)"
		return 0
	fi
fi
show agent 1 1 paths
active=$(paths_json | jq -r '.selections[] | select(.dst == "lab-c2" and .class == "best-effort" and (.max_latency_ms // 0) == 0) | .path_id')
[ -n "$active" ] || fail "no best-effort selection to lab-c2"
# Path ids are <cluster>/<host>: the host tells which WAN link the path crosses.
host=${active#lab-c2/}
# The lab's address plan (scripts/lab/lab.sh): link 1 carries the gateways' node
# addresses, link 2 their 10.78.K.x addresses.
link=""
case "$host" in
"$(node_ip 2 1)") link=1 ;;
10.78.*) link=2 ;;
esac
[ -n "$link" ] || { skipped "cannot tell which WAN link path $active crosses"; return 0; }
note "best-effort traffic to lab-c2 uses $active (WAN link $link)"

lab_wan() { LAB_DIR=$LAB_DIR LAB_PREFIX=$LAB_PREFIX "$DEMO_ROOT/scripts/lab/lab.sh" wan "$@"; }
pod=$(agent_pod 1 1)

# Pod traffic under the blackhole: busybox ping every 50 ms from a pod in cluster 1 to a
# pod in cluster 2, both on the gateway nodes; a lost reply is a missing sequence number.
ns_fresh 1 demo-paths
ns_fresh 2 demo-paths
run_pod 1 1 demo-paths pinger busybox
run_pod 2 1 demo-paths target busybox
dst=$(pod_ip 2 demo-paths target)
wait_for "pod in cluster 1 reaches the pod in cluster 2 ($dst)" 30 pod_exec 1 demo-paths pinger ping -c 1 -W 1 "$dst" ||
	fail "no ping from cluster 1's pod to cluster 2's pod $dst before the blackhole"
pings=240 # 12 s at 50 ms
pinglog=$(mktemp)
trap 'rm -f "$pinglog"' EXIT
pod_exec 1 demo-paths pinger ping -i 0.05 -c "$pings" -W 1 "$dst" >"$pinglog" 2>&1 &
pinger=$!
sleep 2
t0=$(date -u +%s.%N)
show lab_wan 1-2 "$link" --blackhole || fail "blackholing WAN link $link failed"
t1=$(date -u +%s.%N) # the command sets the link's four relays one after the other
moved() {
	kc 1 -n kube-system logs "$pod" -c daemon --since=2m 2>/dev/null |
		jq -r --arg from "$active" --argjson t0 "$t0" '
			select(.msg == "path selection changed" and .dst == "lab-c2" and .class == "best-effort" and .from == $from)
			| (.time | sub("\\.[0-9]+"; "") | sub("Z$"; "") | strptime("%Y-%m-%dT%H:%M:%S") | mktime) as $s
			| (.time | capture("\\.(?<f>[0-9]+)").f // "0") as $f
			| ($s + ("0." + $f | tonumber)) as $at
			| select($at >= $t0) | "\($at) \(.to) \(.reason)"' 2>/dev/null | head -1
}
line=""
deadline=$(($(date +%s) + 15))
while [ -z "$line" ] && [ "$(date +%s)" -lt "$deadline" ]; do
	sleep 0.5
	line=$(moved || true)
done
lift() { lab_wan 1-2 "$link" --blackhole=false >/dev/null 2>&1 || true; }
if [ -z "$line" ]; then
	show agent 1 1 paths || true
	lift
	kill "$pinger" 2>/dev/null || true
	fail "the best-effort selection did not leave $active within 15 s of the blackhole"
fi
read -r at to reason <<<"$line"
ms=$(awk -v a="$at" -v b="$t0" 'BEGIN { printf "%.0f", (a - b) * 1000 }')
ms1=$(awk -v a="$at" -v b="$t1" 'BEGIN { printf "%.0f", (a - b) * 1000 }')
interval=$(kc 1 -n kube-system get configmap patronus-config -o jsonpath='{.data.probe-interval}' 2>/dev/null || true)
ok "blackhole of WAN link $link: best-effort moved $active -> $to ($reason) ${ms1}..${ms} ms after the blackhole (from the end and the start of the command that sets the relays; probe interval ${interval:-50ms} x 3 misses)"
wait "$pinger" || true
# Both gateways point their WireGuard peer at their selected path's endpoint (agent logs):
# cluster 2's return traffic moves by its own selection.
since=$(date -u -d "@$t0" +%Y-%m-%dT%H:%M:%S)
follows() {
	kc "$1" -n kube-system logs "$(agent_pod "$1" 1)" -c daemon --since=2m 2>/dev/null |
		jq -r --arg r "$2" --arg since "$since" 'select(.msg == "tunnel endpoint follows the path selection" and .remote == $r and .time >= $since)
			| "\(.time) cluster '"$1"' -> \(.remote): WireGuard peer endpoint \(.endpoint)"' 2>/dev/null | indent || true
}
follows 1 lab-c2
follows 2 lab-c1
back=$(agent 2 1 paths -o json 2>/dev/null | jq -r '.selections[] | select(.dst == "lab-c1" and .class == "best-effort" and (.max_latency_ms // 0) == 0) | .path_id' || true)
note "cluster 2's best-effort path to lab-c1 (its return traffic): ${back:-unknown}"
show agent 1 1 paths
lift
# seq numbers answered, in order: the longest run of missing ones is the gap.
read -r got last gap <<<"$(sed -n 's/.*seq=\([0-9]*\) .*/\1/p' "$pinglog" | sort -n | awk -v n="$pings" '
	{ if (NR > 1 && $1 - p > g) g = $1 - p; p = $1 } END { printf "%d %d %d\n", NR, p, g }')"
if [ "${got:-0}" -eq 0 ] || [ "${last:-0}" -lt $((pings - 20)) ]; then
	tail -5 "$pinglog" | indent
	fail "pod traffic did not continue after the blackhole of WAN link $link: ${got:-0} of $pings replies, the last seq=${last:-none}"
fi
ok "pod traffic moved too: pod in cluster 1 -> pod in cluster 2 ($dst) every 50 ms across the blackhole, $got of $pings replies, longest gap $((gap * 50)) ms (the gateways' one WireGuard tunnel follows the best-effort path)"
note "WAN link $link restored; best-effort stays on $to until that path fails or the restored one, healthy for the hold-down (5 s), beats it by the margin (10 score points)"
note "per-class steering of pods onto different paths needs per-path tunnel devices (agent --path-device; integration/paths)"

# shellcheck shell=bash
# Path selection and per-class steering between clusters 1 and 2 (issue 7): the lab joins
# their gateways (node 1) by two WAN links through `patronus wanem` relays; the gateway
# agent of cluster 1 probes a path over each (`patronus paths`), and, as installed by
# default, has a WireGuard tunnel per path (wg-lab-c2 over link 1, wg1-lab-c2 over link 2)
# and steers each pod's traffic onto the path selected for its QoS class. The lab's
# path-bandwidth gives link 2 more bandwidth (bulk) and this scenario delays link 2 by 5 ms
# each way (latency-sensitive takes link 1). A latency-sensitive and a bulk pod in cluster 1
# ping a pod in cluster 2: the WireGuard relays of each link count whose pings they carry.
# Then link 2 is blackholed while both ping every 50 ms: the bulk selection moves (the
# agent's log timestamps), the bulk flow's longest gap is printed, the latency-sensitive
# flow is untouched.
# Sourced by scripts/demo.sh with scripts/demo/lib.sh.
scenario "Two WAN paths between clusters 1 and 2: per-class steering, blackhole the bulk path"
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
# selected CLASS: the path cluster 1's gateway selected for CLASS towards lab-c2.
selected() {
	paths_json | jq -r --arg c "$1" '.selections[] | select(.dst == "lab-c2" and .class == $c and (.max_latency_ms // 0) == 0) | .path_id'
}
# link_of PATH_ID: the WAN link a path crosses. Path ids are <cluster>/<host>; the lab's
# address plan (scripts/lab/lab.sh): link 1 carries the gateways' node addresses, link 2
# their 10.78.K.x addresses.
link_of() {
	case "${1#lab-c2/}" in
	"$(node_ip 2 1)") echo 1 ;;
	10.78.*) echo 2 ;;
	*) echo "" ;;
	esac
}
lab_wan() { LAB_DIR=$LAB_DIR LAB_PREFIX=$LAB_PREFIX "$DEMO_ROOT/scripts/lab/lab.sh" wan "$@"; }
# wg_count LINK: datagrams the WireGuard relays of the link carried so far, both
# directions (link 1: port 51820, the first path's tunnel; link 2: 51821, the per-path
# tunnel wg1-*, and 51820). The probes (7948) have relays of their own, not counted.
wg_count() {
	local s n=0 v
	for s in "$LAB_DIR/wan/$LAB_PREFIX-w1-2-$1"/c*-5182?.sock; do
		v=$(patronus wanem show --control "$s" -o json | jq '.stats.forward_in + .stats.reverse_in') || return 1
		n=$((n + v))
	done
	echo "$n"
}
cleanup() {
	lab_wan 1-2 2 clear >/dev/null 2>&1 || true
	rm -f "${lslog:-}" "${bulklog:-}"
}
trap cleanup EXIT

# Link 2 has the bandwidth (path-bandwidth), link 1 the lower latency.
show lab_wan 1-2 2 --delay 5ms || fail "delaying WAN link 2 failed"
ns_fresh 1 demo-paths
ns_fresh 2 demo-paths
run_pod 1 1 demo-paths lat busybox
run_pod 1 1 demo-paths bulk busybox
run_pod 2 1 demo-paths target busybox
kc 1 -n demo-paths annotate pod lat patronus.io/qos-class=latency-sensitive >/dev/null
kc 1 -n demo-paths annotate pod bulk patronus.io/qos-class=bulk >/dev/null
dst=$(pod_ip 2 demo-paths target)
classes_seen() {
	agent 1 1 pods -o json 2>/dev/null | jq -e '[.[] | select(.namespace == "demo-paths") | "\(.name)=\(.qos.class)"] | sort == ["bulk=bulk", "lat=latency-sensitive"]' >/dev/null
}
wait_for "cluster 1's agent sees the pods' QoS classes" 30 classes_seen || fail "the agent does not show the pods' QoS annotations (patronus pods)"
classes_split() {
	[ "$(link_of "$(selected latency-sensitive)")" = 1 ] && [ "$(link_of "$(selected bulk)")" = 2 ]
}
if ! wait_for "latency-sensitive on link 1, bulk on link 2" 40 classes_split; then
	show agent 1 1 paths || true
	fail "latency-sensitive selection $(selected latency-sensitive || true), bulk $(selected bulk || true): not on links 1 and 2 40 s after delaying link 2"
fi
lsp=$(selected latency-sensitive) bulk=$(selected bulk)
show agent 1 1 paths
show agent 1 1 pods
note "latency-sensitive -> $lsp (WAN link 1), bulk -> $bulk (WAN link 2)"
for p in lat bulk; do
	wait_for "pod $p in cluster 1 reaches the pod in cluster 2 ($dst)" 30 pod_exec 1 demo-paths "$p" ping -c 1 -W 1 "$dst" ||
		fail "no ping from cluster 1's pod $p to cluster 2's pod $dst"
done

# Which link carries each pod's pings: 40 pings, one pod at a time, relay counters before
# and after (each ping is 2 datagrams; keepalives and handshakes add a few).
for p in lat bulk; do
	a1=$(wg_count 1) a2=$(wg_count 2)
	got=$({ pod_exec 1 demo-paths "$p" ping -c 40 -i 0.05 -W 1 "$dst" 2>&1 || true; } | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
	d1=$(($(wg_count 1) - a1)) d2=$(($(wg_count 2) - a2))
	want=1 other=$d2 mine=$d1 class=latency-sensitive
	[ "$p" = lat ] || want=2 other=$d1 mine=$d2 class=bulk
	if [ "${got:-0}" -lt 30 ] || [ "$mine" -lt $((2 * got)) ] || [ "$other" -gt 10 ]; then
		fail "pod $p: ${got:-0} of 40 replies; WireGuard relays of link 1 +$d1, link 2 +$d2 datagrams (want its pings on link $want only)"
	fi
	ok "pod $p ($class): $got of 40 pings answered; WireGuard relays of link 1 +$d1, link 2 +$d2 datagrams: its traffic crosses link $want only"
done

# Blackhole link 2 under both pods' pings (every 50 ms, 12 s); a lost reply is a missing
# sequence number.
pings=240
lslog=$(mktemp)
bulklog=$(mktemp)
pod_exec 1 demo-paths lat ping -i 0.05 -c "$pings" -W 1 "$dst" >"$lslog" 2>&1 &
lspid=$!
pod_exec 1 demo-paths bulk ping -i 0.05 -c "$pings" -W 1 "$dst" >"$bulklog" 2>&1 &
bulkpid=$!
sleep 2
t0=$(date -u +%s.%N)
show lab_wan 1-2 2 --blackhole || fail "blackholing WAN link 2 failed"
t1=$(date -u +%s.%N) # the command sets the link's six relays one after the other
pod=$(agent_pod 1 1)
moved() {
	kc 1 -n kube-system logs "$pod" -c daemon --since=2m 2>/dev/null |
		jq -r --arg from "$bulk" --argjson t0 "$t0" '
			select(.msg == "path selection changed" and .dst == "lab-c2" and .class == "bulk" and .from == $from)
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
if [ -z "$line" ]; then
	show agent 1 1 paths || true
	kill "$lspid" "$bulkpid" 2>/dev/null || true
	fail "the bulk selection did not leave $bulk within 15 s of the blackhole"
fi
read -r at to reason <<<"$line"
ms=$(awk -v a="$at" -v b="$t0" 'BEGIN { printf "%.0f", (a - b) * 1000 }')
ms1=$(awk -v a="$at" -v b="$t1" 'BEGIN { printf "%.0f", (a - b) * 1000 }')
interval=$(kc 1 -n kube-system get configmap patronus-config -o jsonpath='{.data.probe-interval}' 2>/dev/null || true)
ok "blackhole of WAN link 2: bulk moved $bulk -> $to ($reason) ${ms1}..${ms} ms after the blackhole (from the end and the start of the command that sets the relays; probe interval ${interval:-50ms} x 3 misses)"
wait "$lspid" "$bulkpid" || true
show agent 1 1 paths
lab_wan 1-2 2 --blackhole=false >/dev/null 2>&1 || true
# gap LOG: "replies last-seq longest-run-of-missing-seqs" of a ping log.
gap() {
	sed -n 's/.*seq=\([0-9]*\) .*/\1/p' "$1" | sort -n | awk '
		{ if (NR > 1 && $1 - p > g) g = $1 - p; p = $1 } END { printf "%d %d %d\n", NR, p, g }'
}
read -r got last g <<<"$(gap "$bulklog")"
if [ "${got:-0}" -eq 0 ] || [ "${last:-0}" -lt $((pings - 20)) ]; then
	tail -5 "$bulklog" | indent
	fail "the bulk pod's traffic did not continue after the blackhole of WAN link 2: ${got:-0} of $pings replies, the last seq=${last:-none}"
fi
ok "bulk pod -> pod in cluster 2 ($dst) every 50 ms across the blackhole: $got of $pings replies, longest gap $((g * 50)) ms (its connection moved to link 1's tunnel when link 2 went down)"
read -r lgot _ lg <<<"$(gap "$lslog")"
note "latency-sensitive pod meanwhile (on link 1, not blackholed): ${lgot:-0} of $pings replies, longest gap $((${lg:-0} * 50)) ms (50 ms: the ping interval, no reply missing)"
note "WAN link 2 restored (blackhole and delay lifted); bulk returns to it once it has stayed healthy for the hold-down (5 s) and offers more bandwidth (path-bandwidth); the moved ping connection stays on link 1 (connections move only when their path goes down)"

# shellcheck shell=bash
# Path selection between clusters 1 and 2 (issue 7): the lab joins their gateways (node 1)
# by two WAN links through `patronus wanem` relays; the gateway agent of cluster 1 probes a
# path over each (`patronus paths`). Blackhole the link the best-effort class uses and
# print how long the selection took to move (the agent's own log timestamps), then lift it.
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
	fail "the best-effort selection did not leave $active within 15 s of the blackhole"
fi
read -r at to reason <<<"$line"
ms=$(awk -v a="$at" -v b="$t0" 'BEGIN { printf "%.0f", (a - b) * 1000 }')
ms1=$(awk -v a="$at" -v b="$t1" 'BEGIN { printf "%.0f", (a - b) * 1000 }')
interval=$(kc 1 -n kube-system get configmap patronus-config -o jsonpath='{.data.probe-interval}' 2>/dev/null || true)
ok "blackhole of WAN link $link: best-effort moved $active -> $to ($reason) ${ms1}..${ms} ms after the blackhole (from the end and the start of the command that sets the relays; probe interval ${interval:-50ms} x 3 misses)"
show agent 1 1 paths
lift
note "WAN link $link restored; traffic fails back once the path stays healthy for the hold-down (5 s)"
# Pod traffic in the lab rides one WireGuard tunnel per cluster pair whose peer endpoint
# comes from the mesh announcement; only per-path tunnels (agent --path-device) steer pods
# by the selection (integration/paths: TestFailoverUnderRunningFlow).
skipped "pod traffic does not follow the selection in this lab: its gateways have one WireGuard tunnel (no per-path devices, agent --path-device); steering under a running flow is tested in integration/paths"

# shellcheck shell=bash
# Node-to-node encryption in cluster 1 (package nodenet, docs/CONTRACT.md "Node-to-node
# encryption"): a pod on each node pings the other while tcpdump on node c1-n1's underlay
# interface watches the traffic to c1-n2: first in the clear (ICMP between the pod
# addresses: the capture does see pod traffic), then with the ConfigMap's `node-encryption:
# wireguard` (only WireGuard UDP 51819 between the node addresses, no ICMP, no pod address).
# `patronus status` shows every peer node encrypted, the routes to the other node's block go
# `dev ptw0`. Afterwards the ConfigMap gets back exactly the data it had, and the plain
# routes, so the later scenarios run as before.
#
# The agent reads the ConfigMap at start only (agent.checkConfig reports a later change as
# "the configuration changed since the agent started; restart the agent to apply it"), so
# each change is followed by a restart of cluster 1's agent pods (deleted; the DaemonSet
# recreates them; pods keep running). Sourced by scripts/demo.sh with scripts/demo/lib.sh.
scenario "Node-to-node encryption in cluster 1: node-encryption wireguard, pod pings seen on the underlay as WireGuard UDP 51819 only"
need_nodes 2 || return 0
command -v tcpdump >/dev/null || { skipped "tcpdump is not installed (scripts/deps.sh installs it)"; return 0; }
command -v jq >/dev/null || { skipped "jq is not installed (scripts/deps.sh installs it)"; return 0; }

NS=demo-encryption
WG_PORT=51819
PEERS=$((DEMO_NODES - 1))
CAP=$(mktemp -d)

cm() { kc 1 -n kube-system "$@" configmap patronus-config; }
# status_of I: `patronus status` on c1-nI (its exit status is non-zero while a check fails:
# the output is what matters here).
status_of() { agent 1 "$1" status 2>&1 || true; }
# encrypted I: c1-nI's agent has ptw0 up and every peer node encrypted.
encrypted() { grep -qE "Node encryption: wireguard on ptw0 .*, $PEERS of $PEERS peer nodes encrypted" <<<"$(status_of "$1")"; }
enc_line() { grep -o 'Node encryption: .*' <<<"$(status_of "$1")" | head -1; }
# block_of I: c1-nI's pod block, from its status.
block_of() { grep -o 'Pod block: [0-9./]*' <<<"$(status_of "$1")" | head -1 | awk '{print $3}'; }
routes() { node_exec 1 "$1" ip route show proto 78; }
# route_dev I O: c1-nI routes c1-nO's block over ptw0 / plain_route I O: via c1-nO's address.
route_dev() { routes "$1" | grep -q "^${block[$2]} dev ptw0 "; }
plain_route() { routes "$1" | grep -q "^${block[$2]} via $(node_ip 1 "$2") " && ! node_exec 1 "$1" ip link show ptw0 >/dev/null 2>&1; }
no_key_annotation() { [ -z "$(kc 1 get node "$(node_name 1 "$1")" -o jsonpath='{.metadata.annotations.patronus\.io/node-wireguard-key}')" ]; }
underlay_if() { node_exec 1 1 ip -o -4 addr show | awk -v a="$(node_ip 1 1)/" 'index($4, a) == 1 {print $2}'; }

# restart_agents: delete cluster 1's Patronus agent pods and wait until every node has a new
# one Ready.
new_agent_ready() {
	local p
	p=$(agent_pod 1 "$1") && [ -n "$p" ] && [ "$p" != "$2" ] &&
		kc 1 -n kube-system wait --for=condition=Ready "pod/$p" --timeout=2s
}
# crash_of POD: how the daemon container's previous run ended (a panic's first lines).
crash_of() {
	local l
	l=$(kc 1 -n kube-system logs "$1" -c daemon --previous) || return 1
	grep -v '^{' <<<"$l" | grep -v '^$' | head -8 | grep . || tail -3 <<<"$l"
}
restart_agents() {
	local i p old=()
	for i in $(seq 1 "$DEMO_NODES"); do old[i]=$(agent_pod 1 "$i"); done
	kc 1 -n kube-system delete pod -l app.kubernetes.io/name=patronus --wait=true --timeout=90s >/dev/null || return 1
	for i in $(seq 1 "$DEMO_NODES"); do
		wait_for "a new Ready agent pod on $(node_name 1 "$i")" 120 new_agent_ready "$i" "${old[i]}" && continue
		show kc 1 -n kube-system get pods -l app.kubernetes.io/name=patronus -o wide || true
		p=$(agent_pod 1 "$i") && [ -n "$p" ] &&
			{ show crash_of "$p" || show kc 1 -n kube-system logs "$p" -c daemon --tail=12 || true; }
		return 1
	done
}

# capture FILE: tcpdump (8 s) on c1-n1's underlay interface, packets to or from c1-n2's
# address or either pod's (in the clear the pods' own addresses are in the IP header),
# while enc-a (c1-n1) pings enc-b (c1-n2) 4 times. Returns ping's status.
capture() {
	local out=$1 pid rc=0
	node_exec 1 1 timeout -s INT 8 tcpdump -i "$DEV" -nn -l -p "host $(node_ip 1 2) or host ${ip[a]} or host ${ip[b]}" >"$out" 2>"$out.err" &
	pid=$!
	wait_for "tcpdump listening on $DEV" 5 grep -q "listening on" "$out.err" || { cat "$out.err" >&2; return 1; }
	pod_exec 1 "$NS" enc-a ping -c 4 -W 2 "${ip[b]}" >"$out.ping" 2>&1 || rc=$?
	wait "$pid" || true
	return $rc
}
# pod_lines FILE: captured lines naming a pod address; wg_lines FILE: lines of UDP port 51819.
pod_lines() { grep -F -e "${ip[a]} " -e "${ip[a]}." -e "${ip[b]} " -e "${ip[b]}." -e "${ip[b]}:" "$1" || true; }
wg_lines() { grep -E "\.$WG_PORT[ :>]" "$1" || true; }

ORIG_DATA=$(cm get -o json | jq -c '.data // {}')
ORIG_MODE=$(jq -r '.["node-encryption"] // "none"' <<<"$ORIG_DATA")
note "cluster 1's patronus-config has node-encryption: $ORIG_MODE"
changed=0
restored=0
# restore: the ConfigMap's data as it was, agents restarted, the plain routes back. Also run
# on the way out when a step failed, so the later scenarios do not run encrypted.
restore() {
	[ $changed = 1 ] && [ $restored = 0 ] || return 0
	restored=1
	cm patch --type=json -p "[{\"op\":\"replace\",\"path\":\"/data\",\"value\":$ORIG_DATA}]" >/dev/null || return 1
	[ "$(cm get -o json | jq -c '.data // {}')" = "$ORIG_DATA" ] || return 1
	restart_agents
}
trap 'restore >/dev/null 2>&1 || echo "demo 25-encryption: could not restore cluster 1 patronus-config / agents" >&2; rm -rf "$CAP"' EXIT

DEV=$(underlay_if)
[ -n "$DEV" ] || fail "c1-n1 has no interface with $(node_ip 1 1)"
declare -A block ip
for i in 1 2; do
	block[$i]=$(block_of "$i")
	[ -n "${block[$i]}" ] || fail "$(node_name 1 "$i"): patronus status shows no pod block"
done
status_ok_before=0
agent 1 1 status >/dev/null 2>&1 && agent 1 2 status >/dev/null 2>&1 && status_ok_before=1

ns_fresh 1 "$NS"
run_pod 1 1 "$NS" enc-a busybox app=enc-a
run_pod 1 2 "$NS" enc-b busybox app=enc-b
ip[a]=$(pod_ip 1 "$NS" enc-a)
ip[b]=$(pod_ip 1 "$NS" enc-b)
note "enc-a on c1-n1: ${ip[a]}, enc-b on c1-n2: ${ip[b]}; capture on c1-n1 $DEV ($(node_ip 1 1)): host $(node_ip 1 2) or either pod"

if [ "$ORIG_MODE" != wireguard ]; then
	# The control: without encryption the same capture shows the pods' ICMP.
	capture "$CAP/plain" || fail "enc-a cannot ping enc-b (node encryption off)"
	n=$(pod_lines "$CAP/plain" | grep -c ICMP || true)
	pod_lines "$CAP/plain" | head -2 | indent
	[ "$n" -gt 0 ] || fail "the capture on $DEV saw no ICMP between the pods in the clear: it would prove nothing"
	ok "encryption off: enc-a pings enc-b, tcpdump on c1-n1 $DEV sees $n ICMP packets between the pod addresses in the clear"

	show cm patch --type merge -p '{"data":{"node-encryption":"wireguard"}}'
	changed=1
	stale() { grep -q 'Configuration: the configuration changed since the agent started' <<<"$(status_of 1)"; }
	if wait_for "the agent noticing the ConfigMap change" 20 stale; then
		note "$(grep -o 'Configuration: .*' <<<"$(status_of 1)")"
	fi
	restart_agents || fail "cluster 1's agents did not come back after the restart"
	ok "node-encryption: wireguard in cluster 1's patronus-config; agent pods restarted to apply it (the agent reads it at start)"
else
	note "node encryption is already on (LAB_NODE_ENCRYPTION=wireguard?): no control capture, nothing to restore"
fi

for i in 1 2; do
	wait_for "$(node_name 1 "$i"): $PEERS of $PEERS peer nodes encrypted" 90 encrypted "$i" ||
		{ show agent 1 "$i" status || true; fail "$(node_name 1 "$i") does not show its peer nodes encrypted"; }
	o=$((3 - i))
	wait_for "$(node_name 1 "$i"): ${block[$o]} dev ptw0" 30 route_dev "$i" "$o" ||
		{ show routes "$i" || true; fail "$(node_name 1 "$i") does not route ${block[$o]} over ptw0"; }
	ok "$(node_name 1 "$i"): $(enc_line "$i")"
done
show node_exec 1 1 ip route show proto 78
ok "c1-n1 routes c1-n2's block ${block[2]} dev ptw0 (not via $(node_ip 1 2) in the clear)"

# The WireGuard handshake happens on the first packet: one ping first, then the capture.
wait_for "enc-a reaching enc-b through ptw0" 30 pod_exec 1 "$NS" enc-a ping -c 1 -W 1 "${ip[b]}" || fail "enc-a cannot ping enc-b with node encryption on"
capture "$CAP/enc" || { cat "$CAP/enc.ping" | indent; fail "enc-a cannot ping enc-b with node encryption on"; }
replies=$(grep -o '[0-9]* packets received' "$CAP/enc.ping" || true)
ok "encryption on: enc-a (c1-n1) -> enc-b (c1-n2): ping, ${replies:-replies}"
nwg=$(wg_lines "$CAP/enc" | wc -l)
nicmp=$(grep -c ICMP "$CAP/enc" || true)
npod=$(pod_lines "$CAP/enc" | wc -l)
wg_lines "$CAP/enc" | head -3 | indent
[ "$nwg" -gt 0 ] || { indent <"$CAP/enc"; fail "tcpdump on $DEV saw no WireGuard UDP $WG_PORT during the ping"; }
[ "$npod" = 0 ] || { pod_lines "$CAP/enc" | head -5 | indent; fail "tcpdump on $DEV saw $npod packets with a pod address in the clear"; }
ok "tcpdump on c1-n1 $DEV during the ping: $nwg WireGuard packets UDP $WG_PORT between $(node_ip 1 1) and $(node_ip 1 2), 0 with a pod address"
[ "$nicmp" = 0 ] || { grep ICMP "$CAP/enc" | head -3 | indent; fail "tcpdump on $DEV saw $nicmp ICMP packets between the nodes"; }
ok "no ICMP on the underlay: the pods' pings travel only inside WireGuard"
note "after the ping, c1-n1: $(enc_line 1)"

if [ $changed = 1 ]; then
	restore || fail "could not restore cluster 1's patronus-config and restart its agents"
	ok "patronus-config restored to its previous data (node-encryption: $ORIG_MODE); agent pods restarted"
	for i in 1 2; do
		o=$((3 - i))
		wait_for "$(node_name 1 "$i"): ${block[$o]} via $(node_ip 1 "$o"), no ptw0" 60 plain_route "$i" "$o" ||
			{ show routes "$i" || true; fail "$(node_name 1 "$i") has not its plain route to ${block[$o]} back"; }
		wait_for "$(node_name 1 "$i")'s key annotation withdrawn" 30 no_key_annotation "$i" ||
			fail "$(node_name 1 "$i") still has annotation patronus.io/node-wireguard-key"
	done
	show node_exec 1 1 ip route show proto 78
	ok "plain routes back (${block[2]} via $(node_ip 1 2)), no ptw0, key annotations withdrawn"
	wait_for "enc-a reaching enc-b in the clear" 30 pod_exec 1 "$NS" enc-a ping -c 1 -W 1 "${ip[b]}" || fail "enc-a cannot ping enc-b after the restore"
	if [ $status_ok_before = 1 ]; then
		both_ok() { agent 1 1 status && agent 1 2 status; }
		wait_for "patronus status passing on c1-n1 and c1-n2" 120 both_ok ||
			{ show agent 1 1 status || true; fail "patronus status in cluster 1 no longer passes after the restore"; }
		ok "enc-a pings enc-b again; patronus status passes on both nodes as before"
	else
		ok "enc-a pings enc-b again"
	fi
fi
kc 1 delete namespace "$NS" --wait=false >/dev/null

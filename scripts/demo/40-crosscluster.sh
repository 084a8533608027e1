# shellcheck shell=bash
# Pod-to-pod across clusters (issue 6, the seed's "Pod-to-Pod Communication Across
# Clusters"): the lab joins the gateways of clusters 1 and 2 (node 1 of each, label
# patronus.io/gateway=true) by two WAN links through `patronus wanem` relays; their agents
# find each other through remote-clusters (gossip seeds, pinned cluster keys) and bring up a
# WireGuard tunnel from the verified mesh state. Shown: `patronus members` on gateway c1-n1,
# the routes on a gateway and a non-gateway node, a pod in cluster 1 pinging a pod in
# cluster 2 and back, a 16 MiB TCP transfer across the tunnel (checksum compared), and
# `patronus status` with the active tunnel. Sourced by scripts/demo.sh with
# scripts/demo/lib.sh.
scenario "Across clusters: patronus members, a pod in cluster 1 pings and sends 16 MiB over TCP to a pod in cluster 2 (WireGuard tunnel)"
need_clusters 2 || return 0
[ -f "$LAB_DIR/wan/links" ] || { skipped "the lab has no WAN links between its clusters (scripts/lab/lab.sh up makes them)"; return 0; }
agent_has 1 1 members || { skipped "patronus members is not in this build"; return 0; }

# The gateways' mesh: both alive (the agents retry the seeds every 5 s).
both_alive() { [ "$(agent 1 1 members -o json | jq '[.[] | select(.status == "alive")] | length')" -ge 2 ]; }
wait_for "both gateways alive in the mesh" 60 both_alive || { show agent 1 1 members || true; fail "cluster 1's gateway does not see cluster 2's as alive"; }
show agent 1 1 members
ok "patronus members on gateway c1-n1: the gateways of lab-c1 and lab-c2, joined over WAN link 1"

# The tunnel, from each side's verified announcement of the other.
# (Output captured first: grep -q quitting early would fail the pipeline under pipefail.)
tunnel_up() { local out; out=$(agent "$1" 1 status 2>/dev/null || true); grep -q "Active tunnels: 1 (lab-c$2)" <<<"$out"; }
wait_for "tunnel c1 -> c2" 60 tunnel_up 1 2 || fail "gateway c1-n1 has no active tunnel to lab-c2"
wait_for "tunnel c2 -> c1" 60 tunnel_up 2 1 || fail "gateway c2-n1 has no active tunnel to lab-c1"
show agent 1 1 keys show
ok "WireGuard tunnel lab-c1 <-> lab-c2 up on both gateways (peer and endpoint from the mesh)"

# Pods: on the last node of each cluster (a non-gateway node when the lab has two), so the
# path is pod -> its node -> gateway -> tunnel -> gateway -> node -> pod.
last=$(( DEMO_NODES < 2 ? 1 : 2 ))
ns_fresh 1 demo-xc
ns_fresh 2 demo-xc
run_pod 1 "$last" demo-xc pod-a busybox app=demo-xc
# pod-b stores what a TCP client sends on port 5000, with its checksum and size.
run_pod 2 "$last" demo-xc pod-b busybox app=demo-xc -- sh -c \
	'printf "#!/bin/sh\ncat >/tmp/in\nmd5sum </tmp/in >/tmp/sum\nwc -c </tmp/in >>/tmp/sum\n" >/tmp/recv; chmod +x /tmp/recv; exec nc -ll -p 5000 -e /tmp/recv'
ip_a=$(pod_ip 1 demo-xc pod-a)
ip_b=$(pod_ip 2 demo-xc pod-b)
ok "pod-a on $(node_name 1 "$last") (cluster lab-c1): $ip_a; pod-b on $(node_name 2 "$last") (cluster lab-c2): $ip_b"
if [ "$last" = 2 ]; then
	show node_exec 1 2 ip route get "$ip_b"
	note "non-gateway node c1-n2 routes lab-c2's pod CIDR to its gateway (proto 77, the agent's)"
fi
show node_exec 1 1 ip route get "$ip_b"
note "gateway c1-n1 routes it into the tunnel device"

show pod_exec 1 demo-xc pod-a ping -c 3 -W 2 "$ip_b" || fail "pod-a cannot ping pod-b across the tunnel"
ok "ping: pod-a (lab-c1) -> pod-b (lab-c2)"
show pod_exec 2 demo-xc pod-b ping -c 3 -W 2 "$ip_a" || fail "pod-b cannot ping pod-a across the tunnel"
ok "ping back: pod-b (lab-c2) -> pod-a (lab-c1)"

pod_exec 1 demo-xc pod-a sh -c 'dd if=/dev/urandom of=/tmp/blob bs=1M count=16 2>/dev/null'
sum_a=$(pod_exec 1 demo-xc pod-a sh -c 'md5sum </tmp/blob' | awk '{print $1}')
show pod_exec 1 demo-xc pod-a sh -c "time nc $ip_b 5000 </tmp/blob" || fail "TCP transfer pod-a -> pod-b:5000 failed"
got() { pod_exec 2 demo-xc pod-b cat /tmp/sum 2>/dev/null | tr '\n' ' '; }
complete() { [ "$(got | awk '{print $3}')" = 16777216 ]; }
wait_for "pod-b received 16 MiB" 30 complete || true
res=$(got || true)
note "pod-a sent 16777216 bytes, md5 $sum_a; pod-b stored: ${res:-nothing}"
[ "$(echo "$res" | awk '{print $1}')" = "$sum_a" ] && [ "$(echo "$res" | awk '{print $3}')" = 16777216 ] ||
	fail "pod-b did not receive the 16 MiB intact"
ok "TCP: 16 MiB from pod-a (lab-c1) to pod-b:5000 (lab-c2) across the tunnel, checksum equal"

show agent 1 1 status || true
tunnel_up 1 2 || fail "patronus status on c1-n1 does not show the tunnel to lab-c2"
ok "patronus status on gateway c1-n1: Active tunnels: 1 (lab-c2)"

# shellcheck shell=bash
# Pod networking across the nodes of one cluster (package nodenet, docs/CONTRACT.md "Pod
# networking across nodes"): each node's agent knows its pod block, routes the other
# node's block (routing protocol 78), a pod on each node gets an address of its node's
# block, the pods ping each other both ways, and a server sees the client pod's own
# address (pod-to-pod traffic is never masqueraded, so NetworkPolicy sees real sources).
# Sourced by scripts/demo.sh with scripts/demo/lib.sh.
scenario "Two nodes of one cluster: a pod block each, routes between them, pods ping across (cluster 1)"
need_nodes 2 || return 0

# in_cidr IP CIDR: true if the IPv4 address IP lies in CIDR.
in_cidr() {
	local ip=$1 net=${2%/*} bits=${2#*/} a b c d n
	IFS=. read -r a b c d <<<"$ip"
	n=$(( (a << 24) | (b << 16) | (c << 8) | d ))
	IFS=. read -r a b c d <<<"$net"
	local m=$(( (a << 24) | (b << 16) | (c << 8) | d ))
	local mask=$(( bits == 0 ? 0 : (0xffffffff << (32 - bits)) & 0xffffffff ))
	[ $(( n & mask )) = $(( m & mask )) ]
}

declare -A block
for i in 1 2; do
	st=$(agent 1 "$i" status 2>&1) || true
	line=$(grep -o 'Pod block: .*' <<<"$st" | head -1) || true
	[ -n "$line" ] || fail "$(node_name 1 "$i"): patronus status shows no pod block line:
$st"
	block[$i]=$(awk '{print $3}' <<<"$line")
	ok "$(node_name 1 "$i") (underlay $(node_ip 1 "$i")): $line"
done
[ "${block[1]}" != "${block[2]}" ] || fail "both nodes hold ${block[1]}"

for i in 1 2; do
	o=$((3 - i))
	show node_exec 1 "$i" ip route show proto 78
	node_exec 1 "$i" ip route show proto 78 | grep -q "^${block[$o]} via $(node_ip 1 "$o") " ||
		fail "$(node_name 1 "$i") has no route to $(node_name 1 "$o")'s block ${block[$o]} via $(node_ip 1 "$o")"
	ok "$(node_name 1 "$i") routes $(node_name 1 "$o")'s block ${block[$o]} via $(node_ip 1 "$o") (direct: same underlay subnet)"
done

ns_fresh 1 demo-multinode
run_pod 1 1 demo-multinode mn-a busybox app=mn-a
run_pod 1 2 demo-multinode mn-b busybox app=mn-b
run_pod 1 2 demo-multinode mn-web agnhost app=mn-web
show kc 1 -n demo-multinode get pods -o wide
declare -A ip
for p in mn-a:1 mn-b:2 mn-web:2; do
	name=${p%:*} i=${p#*:}
	ip[$name]=$(pod_ip 1 demo-multinode "$name")
	in_cidr "${ip[$name]}" "${block[$i]}" || fail "$name on $(node_name 1 "$i") has ${ip[$name]}, outside the node's block ${block[$i]}"
	ok "$name on $(node_name 1 "$i"): ${ip[$name]} (in ${block[$i]})"
done

show pod_exec 1 demo-multinode mn-a ping -c 3 -W 2 "${ip[mn-b]}" || fail "mn-a cannot ping mn-b across nodes"
ok "mn-a ($(node_name 1 1)) -> mn-b ($(node_name 1 2)): ping"
show pod_exec 1 demo-multinode mn-b ping -c 3 -W 2 "${ip[mn-a]}" || fail "mn-b cannot ping mn-a across nodes"
ok "mn-b ($(node_name 1 2)) -> mn-a ($(node_name 1 1)): ping"

# (busybox wget -T crashes in this image)
seen=$(pod_exec 1 demo-multinode mn-a wget -qO- "http://${ip[mn-web]}:8080/clientip") || fail "mn-a cannot reach mn-web:8080"
note "mn-web saw the client as $seen"
[ "${seen%:*}" = "${ip[mn-a]}" ] || fail "mn-web saw $seen, not mn-a's own address ${ip[mn-a]} (pod-to-pod traffic was translated)"
ok "no SNAT between pods: mn-web ($(node_name 1 2)) sees mn-a's own address ${ip[mn-a]}"

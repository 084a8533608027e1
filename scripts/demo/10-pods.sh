# shellcheck shell=bash
# Pods on both nodes of cluster 1 get their IPs from patronus-cni, reach each other (same
# node and across nodes) and resolve names through CoreDNS. Sourced by scripts/demo.sh with
# scripts/demo/lib.sh.
scenario "Pods get IPs from Patronus, ping each other across nodes, DNS works (cluster 1)"
last=$(( DEMO_NODES < 2 ? 1 : 2 ))
ns_fresh 1 demo-pods
for i in $(seq 1 "$last"); do
	run_pod 1 "$i" demo-pods "pod-n$i" busybox app=demo
	ok "pod-n$i on $(node_name 1 "$i"): IP $(pod_ip 1 demo-pods "pod-n$i") (node's pod CIDR $(kc 1 get node "$(node_name 1 "$i")" -o jsonpath='{.spec.podCIDR}'))"
done
run_pod 1 1 demo-pods pod-n1b busybox app=demo
ok "pod-n1b on $(node_name 1 1): IP $(pod_ip 1 demo-pods pod-n1b)"
show kc 1 -n demo-pods get pods -o wide

ip_n1b=$(pod_ip 1 demo-pods pod-n1b)
show pod_exec 1 demo-pods pod-n1 ping -c 2 -W 2 "$ip_n1b" || fail "pod-n1 cannot ping pod-n1b (same node)"
ok "same node: pod-n1 -> pod-n1b ($ip_n1b)"
if [ "$last" = 2 ]; then
	ip_n2=$(pod_ip 1 demo-pods pod-n2)
	show pod_exec 1 demo-pods pod-n1 ping -c 2 -W 2 "$ip_n2" || fail "pod-n1 cannot ping pod-n2 (other node)"
	ok "across nodes: pod-n1 ($(node_name 1 1)) -> pod-n2 ($(node_name 1 2), $ip_n2)"
else
	skipped "ping across nodes: the lab has 1 node per cluster"
fi

show pod_exec 1 demo-pods pod-n1 cat /etc/resolv.conf
show pod_exec 1 demo-pods pod-n1 nslookup kubernetes.default.svc.cluster.local ||
	fail "pod-n1 cannot resolve kubernetes.default.svc.cluster.local"
ok "DNS: kubernetes.default.svc.cluster.local resolves through CoreDNS (Service 10.96.0.10)"

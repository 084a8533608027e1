# shellcheck shell=bash
# Multi-Cluster Services (issue 9, the seed's "Cross-Cluster Service Discovery", to the MCS
# API of KEP-1645): cluster 2 exports a Service with a ServiceExport; cluster 1's MCS leader
# (a gateway agent) imports it from the mesh as a ServiceImport with a ClusterSetIP and an
# EndpointSlice of cluster 2's endpoints; a pod in cluster 1 calls it by its name
# web.demo-mcs.svc.clusterset.local (CoreDNS's kubernetes plugin, `multicluster
# clusterset.local`, reading the ServiceImport) and by the ClusterSetIP, which the node's
# agent translates (nftables) to cluster 2's pod across the tunnel. Then the export is
# deleted and the import disappears. Sourced by scripts/demo.sh with scripts/demo/lib.sh.
scenario "Multi-Cluster Services: a Service exported from cluster 2, called from a pod in cluster 1 by web.demo-mcs.svc.clusterset.local"
need_clusters 2 || return 0
[ -f "$LAB_DIR/wan/links" ] || { skipped "the lab's clusters are not joined (no WAN links; scripts/lab/lab.sh up makes them)"; return 0; }
for c in 1 2; do
	kc "$c" get crd serviceexports.multicluster.x-k8s.io serviceimports.multicluster.x-k8s.io >/dev/null 2>&1 ||
		{ skipped "cluster $c has no MCS CRDs (manifests/01-mcs-crds.yaml)"; return 0; }
done
kc 1 -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}' | grep -q 'multicluster clusterset.local' ||
	{ skipped "cluster 1's CoreDNS has no multicluster zone (the lab predates scripts/lab/coredns.yaml's; lab.sh down && up)"; return 0; }
mcs_line() { agent "$1" 1 status 2>/dev/null | grep 'MCS:'; }
mcs_line 1 | grep -q 'controller running' ||
	{ skipped "the gateway agent of cluster 1 runs no MCS controller: $(mcs_line 1 || echo 'no MCS line in patronus status')"; return 0; }

# Namespace sameness: the import is made only where the namespace exists.
ns_fresh 1 demo-mcs
ns_fresh 2 demo-mcs
last=$(( DEMO_NODES < 2 ? 1 : 2 ))
run_pod 2 "$last" demo-mcs web agnhost app=web
kc 2 -n demo-mcs expose pod web --name web --port 80 --target-port 8080 >/dev/null
kc 2 apply -f - >/dev/null <<'EOF'
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: web, namespace: demo-mcs}
EOF
ok "cluster 2: Service demo-mcs/web (pod web on $(node_name 2 "$last"), $(pod_ip 2 demo-mcs web)) and its ServiceExport"
valid() { [ "$(kc 2 -n demo-mcs get serviceexport web -o jsonpath='{.status.conditions[?(@.type=="Valid")].status}')" = True ]; }
wait_for "ServiceExport Valid" 60 valid || { show kc 2 -n demo-mcs get serviceexport web -o yaml || true; fail "cluster 2's ServiceExport is not Valid"; }
show kc 2 -n demo-mcs get serviceexport web -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'

vip() { kc 1 -n demo-mcs get serviceimport web -o jsonpath='{.spec.ips[0]}' 2>/dev/null; }
imported() { [ -n "$(vip)" ] && kc 1 -n demo-mcs get endpointslices -l multicluster.kubernetes.io/source-cluster=lab-c2 -o name | grep -q .; }
wait_for "ServiceImport in cluster 1" 60 imported || { show kc 1 -n demo-mcs get serviceimports,endpointslices || true; fail "no ServiceImport with a ClusterSetIP in cluster 1"; }
VIP=$(vip)
show kc 1 -n demo-mcs get serviceimports
show kc 1 -n demo-mcs get endpointslices -l multicluster.kubernetes.io/service-name=web -L multicluster.kubernetes.io/source-cluster
ok "cluster 1: ServiceImport demo-mcs/web, ClusterSetIP $VIP, endpoints of lab-c2"

run_pod 1 1 demo-mcs client busybox app=client
resolved() { pod_exec 1 demo-mcs client nslookup web.demo-mcs.svc.clusterset.local. | grep -q "$VIP"; }
wait_for "web.demo-mcs.svc.clusterset.local resolves" 60 resolved || { show pod_exec 1 demo-mcs client nslookup web.demo-mcs.svc.clusterset.local. || true; fail "the clusterset.local name does not resolve to $VIP"; }
show pod_exec 1 demo-mcs client nslookup web.demo-mcs.svc.clusterset.local.
ok "DNS in cluster 1: web.demo-mcs.svc.clusterset.local -> $VIP (CoreDNS, multicluster zone)"

# agnhost's /hostname over plain HTTP/1.0 with nc (this busybox image's wget crashes).
call() {
	local r
	pod_exec 1 demo-mcs client sh -c "printf 'GET /hostname HTTP/1.0\r\n\r\n' | nc -w 5 $1 80" | tail -n 1
	r=${PIPESTATUS[0]}
	echo
	return "$r"
}
answered() { [ "$(call web.demo-mcs.svc.clusterset.local)" = web ]; }
wait_for "call by name" 30 answered || true
show call web.demo-mcs.svc.clusterset.local || fail "pod client (cluster 1) cannot call web.demo-mcs.svc.clusterset.local"
[ "$(call web.demo-mcs.svc.clusterset.local)" = web ] || fail "the answer is not cluster 2's pod web"
ok "pod client on $(node_name 1 1) (lab-c1) called web.demo-mcs.svc.clusterset.local: answered by pod web in lab-c2"
show call "$VIP" || fail "pod client cannot call the ClusterSetIP $VIP"
show node_exec 1 1 nft list chain inet patronus mcs-prerouting
note "the node's agent DNATs the ClusterSetIP (chains mcs-*) to lab-c2's endpoint, reached through the tunnel"

# Unexport: the import goes away in cluster 1.
kc 2 -n demo-mcs delete serviceexport web >/dev/null
gone() { ! kc 1 -n demo-mcs get serviceimport web >/dev/null 2>&1; }
wait_for "ServiceImport removed" 60 gone || fail "cluster 1 still imports demo-mcs/web after the unexport"
ok "ServiceExport deleted in cluster 2: cluster 1's ServiceImport and EndpointSlices are gone"

#!/usr/bin/env bash
# The Patronus demo on this one machine (`make demo`; `make demo-down` or
# `./scripts/demo.sh down` removes it).
#
#   ./scripts/demo.sh            install what is missing, build, start the demo node and run
#                                every scenario; the node keeps running afterwards so you
#                                can look around (the script prints how)
#   ./scripts/demo.sh --teardown the same, then remove everything at the end
#   ./scripts/demo.sh down       remove the demo node and all its state
#
# The node is a network namespace, patronus-demo-node, with containerd 1.6 (Debian's)
# running inside it in a private mount namespace; patronus-cni is its CNI plugin. Nothing
# in the root network namespace is changed. State: /tmp/patronus-demo (PATRONUS_DEMO_DIR).
# Re-running first removes the previous demo.
#
# Each scenario is a function `scenario_*` listed in SCENARIOS; a scenario whose parts are
# not built yet prints "skipped: not built yet".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DEMO_DIR=${PATRONUS_DEMO_DIR:-/tmp/patronus-demo}
NODE_DIR=$DEMO_DIR/node
NETNS=patronus-demo-node
PATRONUS=$ROOT/bin/patronus
BUSYBOX=patronus.local/busybox:1.35
PODS=(pod-a pod-b)

SCENARIOS=(scenario_api_server scenario_agent scenario_pods scenario_ping scenario_status scenario_policy scenario_mesh scenario_not_built)

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' Y=$'\e[33m' N=$'\e[0m'; else B= G= Y= N=; fi
step() { printf '%s==>%s %s\n' "$B" "$N" "$*"; }
scenario() { printf '\n%s=== %s ===%s\n' "$B" "$*" "$N"; }
ok() { printf '  %s✓%s %s\n' "$G" "$N" "$*"; }
skipped() { printf '  %sskipped: %s%s\n' "$Y" "$*" "$N"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# crictl against the demo node, inside its netns (exec streams via the node's loopback).
crictl() { nsenter --net="/run/netns/$NETNS" -- "$CRICTL" --config "$NODE_DIR/crictl.yaml" "$@"; }

# in_node CMD...: run CMD inside the node's network and mount namespaces, where /var/lib
# and /run are the node's own (so default paths such as the database work as on a node).
in_node() { nsenter --target "$(cat "$NODE_DIR/containerd.pid")" --net --mount -- "$@"; }

down() {
	if [ -d "$NODE_DIR" ]; then
		step "removing the demo node $NETNS (pods get their CNI DEL first)"
		CRICTL=${CRICTL:-$(ls "${XDG_CACHE_HOME:-$HOME/.cache}"/patronus/tools/crictl/*/crictl 2>/dev/null | tail -1)} \
			./scripts/containerd/node.sh down "$NODE_DIR"
	fi
	# A node dir that is gone but a netns that is not (e.g. removed by hand): remove it too.
	if [ -e "/run/netns/$NETNS" ]; then ip netns del "$NETNS" 2>/dev/null || true; fi
	rm -rf "$DEMO_DIR"
	./scripts/mesh-demo.sh down
}

prepare() {
	step "installing Debian packages if missing (containerd, runc, iproute2, ...)"
	./scripts/deps.sh
	step "building patronus (make build; first time: a minute or two)"
	make --no-print-directory build >/dev/null
	step "building or reusing crictl (first time: about 2 minutes)"
	CRICTL=$(./scripts/containerd/build-crictl.sh)/crictl
	step "building or reusing the reference CNI plugins (containerd needs 'loopback')"
	PLUGINS=$(./scripts/build-cni-plugins.sh)
}

start_node() {
	step "starting containerd in network namespace $NETNS (state in $NODE_DIR)"
	mkdir -p "$DEMO_DIR"
	./scripts/containerd/node.sh up "$NODE_DIR" "$NETNS" 2>&1 | sed 's/^/    /'
	local bin=$NODE_DIR/cni/bin conf=$NODE_DIR/cni/net.d
	if "$PATRONUS" install-cni --help >/dev/null 2>&1; then
		step "installing patronus-cni and its conflist with: patronus install-cni --bin-dir $bin --conf-dir $conf"
		"$PATRONUS" install-cni --bin-dir "$bin" --conf-dir "$conf" | sed 's/^/    /'
	else
		step "installing patronus-cni and manifests/10-patronus.conflist by copying (patronus install-cni not built yet)"
		install -m 0755 "$PATRONUS" "$bin/patronus-cni"
		install -m 0644 manifests/10-patronus.conflist "$conf/10-patronus.conflist"
	fi
	install -m 0755 "$PLUGINS/loopback" "$bin/loopback"
	install -m 0755 "$PLUGINS/host-local" "$bin/host-local"
	step "building and importing the local images (pause, busybox)"
	./scripts/images.sh --import "$NODE_DIR/containerd.sock" 2>&1 | sed 's/^/    /'
	step "waiting for containerd's CRI to load the CNI config"
	for _ in $(seq 1 100); do
		crictl info 2>/dev/null | grep -A2 '"type": "NetworkReady"' | grep -q '"status": true' && break
		sleep 0.2
	done
	# A wrapper so a person can look around afterwards.
	cat >"$DEMO_DIR/crictl" <<WRAP
#!/bin/sh
exec nsenter --net=/run/netns/$NETNS -- $CRICTL --config $NODE_DIR/crictl.yaml "\$@"
WRAP
	chmod +x "$DEMO_DIR/crictl"
}

# --- scenarios ---------------------------------------------------------------------------

scenario_pods() {
	scenario "Pods through containerd's CRI get their network from patronus-cni"
	local cg
	cg=$(cat "$NODE_DIR/cgroup-parent")
	for pod in "${PODS[@]}"; do
		# The sandbox carries the API object's uid, as kubelet's would: the agent matches
		# the plugin's registration with the object by namespace, name and uid.
		local uid
		uid=$(kubectl get pod "$pod" -o 'jsonpath={.metadata.uid}')
		cat >"$DEMO_DIR/$pod.json" <<JSON
{"metadata": {"name": "$pod", "namespace": "default", "uid": "$uid", "attempt": 0},
 "log_directory": "$DEMO_DIR/logs/$pod", "linux": {"cgroup_parent": "$cg"}}
JSON
		cat >"$DEMO_DIR/$pod-shell.json" <<JSON
{"metadata": {"name": "shell"}, "image": {"image": "$BUSYBOX"},
 "command": ["sleep", "86400"], "log_path": "shell.log", "linux": {}}
JSON
		local id ctr ip
		id=$(crictl runp "$DEMO_DIR/$pod.json")
		ctr=$(crictl create "$id" "$DEMO_DIR/$pod-shell.json" "$DEMO_DIR/$pod.json")
		crictl start "$ctr" >/dev/null
		ip=$(crictl inspectp "$id" | sed -n 's/^ *"ip": "\(.*\)",\{0,1\}$/\1/p' | head -1)
		[ -n "$ip" ] || die "pod $pod got no IP (see $NODE_DIR/containerd.log)"
		echo "$id" >"$DEMO_DIR/$pod.id"
		echo "$ctr" >"$DEMO_DIR/$pod.ctr"
		echo "$ip" >"$DEMO_DIR/$pod.ip"
		ok "$(printf '%-6s sandbox %.12s  IP %s' "$pod" "$id" "$ip")"
	done
	echo
	crictl pods | sed 's/^/    /'
	echo
	echo "    the node's bridge:"
	ip -n "$NETNS" -br addr show cni-bridge0 | sed 's/^/      /'
}

scenario_ping() {
	scenario "pod-a pings pod-b (busybox ping inside pod-a's container, via crictl exec)"
	local a_ctr b_ip
	a_ctr=$(cat "$DEMO_DIR/pod-a.ctr")
	b_ip=$(cat "$DEMO_DIR/pod-b.ip")
	crictl exec "$a_ctr" ping -c 3 -W 2 "$b_ip" | sed 's/^/    /'
	ok "pod-a ($(cat "$DEMO_DIR/pod-a.ip")) reached pod-b ($b_ip)"
}

scenario_status() {
	scenario "patronus pods and patronus status: the pods as Kubernetes sees them, from the agent"
	local i
	for i in $(seq 1 40); do
		[ "$(in_node "$PATRONUS" pods -o json 2>/dev/null | grep -c '"synced": true')" -ge 2 ] && break
		sleep 0.25
	done
	in_node "$PATRONUS" pods | sed 's/^/    /'
	echo
	# Inside the node's namespaces the database and agent socket are at their default paths;
	# the CNI bin dir is the demo node's.
	local rc=0
	in_node "$PATRONUS" status --cni-bin-dir "$NODE_DIR/cni/bin" | sed 's/^/    /' || rc=$?
	[ $rc = 0 ] || echo "    (patronus status exited $rc: a check above failed)"
}

scenario_api_server() {
	scenario "A real Kubernetes API server for the demo node (etcd + kube-apiserver inside the node)"
	step "building or reusing etcd, kube-apiserver and kubectl (first time: 6 to 15 minutes)"
	K8S_BIN=$(./scripts/build-k8s.sh)
	local pki=$DEMO_DIR/pki
	step "certificates for the demo cluster in $pki"
	go run ./scripts/lab/pki -dir "$pki" ca
	go run ./scripts/lab/pki -dir "$pki" sa
	go run ./scripts/lab/pki -dir "$pki" cert apiserver kube-apiserver "" 127.0.0.1,localhost
	go run ./scripts/lab/pki -dir "$pki" cert admin admin system:masters
	# Both run inside the node's namespaces: the node's loopback is theirs alone.
	in_node sh -c "exec '$K8S_BIN/etcd' --data-dir '$DEMO_DIR/etcd' --listen-client-urls http://127.0.0.1:2379 \
		--advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
		--unsafe-no-fsync >'$DEMO_DIR/etcd.log' 2>&1 & echo \$! >'$DEMO_DIR/etcd.pid'"
	in_node sh -c "exec '$K8S_BIN/kube-apiserver' --etcd-servers http://127.0.0.1:2379 \
		--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port 6443 \
		--endpoint-reconciler-type none --authorization-mode RBAC --allow-privileged \
		--service-cluster-ip-range 10.96.0.0/12 --disable-admission-plugins ServiceAccount \
		--client-ca-file '$pki/ca.crt' --tls-cert-file '$pki/apiserver.crt' --tls-private-key-file '$pki/apiserver.key' \
		--service-account-issuer https://kubernetes.default.svc --service-account-key-file '$pki/sa.pub' \
		--service-account-signing-key-file '$pki/sa.key' >'$DEMO_DIR/kube-apiserver.log' 2>&1 & echo \$! >'$DEMO_DIR/kube-apiserver.pid'"
	cat >"$DEMO_DIR/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$pki/ca.crt"}}]
users: [{name: admin, user: {client-certificate: "$pki/admin.crt", client-key: "$pki/admin.key"}}]
contexts: [{name: demo, context: {cluster: demo, user: admin}}]
current-context: demo
KC
	local i
	for i in $(seq 1 120); do
		kubectl get --raw /readyz >/dev/null 2>&1 && break
		[ "$i" = 120 ] && die "kube-apiserver did not become ready (see $DEMO_DIR/kube-apiserver.log)"
		sleep 0.5
	done
	ok "kube-apiserver ready at https://127.0.0.1:6443 inside $NETNS ($(kubectl version 2>/dev/null | sed -n 's/^Server Version: //p'))"
	step "installing Patronus' objects the way a user does: kubectl apply --server-side -f manifests/"
	kubectl apply --server-side -f "$ROOT/manifests/" 2>&1 | sed 's/^/    /'
	step "the pods as API objects bound to node $NETNS (as the scheduler would; containerd starts their sandboxes next)"
	local pod
	for pod in "${PODS[@]}"; do
		kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: default, labels: {app: $pod, demo: patronus}, annotations: {patronus.io/qos-class: $([ "$pod" = pod-a ] && echo latency-sensitive || echo bulk)}}
spec: {nodeName: $NETNS, containers: [{name: shell, image: $BUSYBOX}]}
YAML
	done
	kubectl get pods -o wide 2>&1 | sed 's/^/    /'
}

# kubectl against the demo's API server, from inside the node.
kubectl() { in_node "$K8S_BIN/kubectl" --kubeconfig "$DEMO_DIR/kubeconfig" "$@"; }

scenario_agent() {
	scenario "patronus agent on the node (the DaemonSet's process; the CNI plugin asks it before a pod starts)"
	in_node sh -c "exec '$PATRONUS' agent --kubeconfig '$DEMO_DIR/kubeconfig' --node-name '$NETNS' --mesh=false --paths=false \
		--cni-conflist '$NODE_DIR/cni/net.d/10-patronus.conflist' --metrics-addr 127.0.0.1:9476 --log-format text \
		>'$DEMO_DIR/agent.log' 2>&1 & echo \$! >'$DEMO_DIR/agent.pid'"
	local i
	for i in $(seq 1 60); do
		in_node sh -c "test -S /var/run/patronus/agent.sock" && break
		[ "$i" = 60 ] && die "the agent did not become ready (see $DEMO_DIR/agent.log)"
		sleep 0.5
	done
	ok "agent running (log: $DEMO_DIR/agent.log)"
}

scenario_policy() {
	scenario "NetworkPolicy: what the seed's backend-policy allows (patronus policy matrix / trace)"
	# The verdicts the datapath enforces come from the same compiled rules; the enforcing
	# datapath itself is exercised end to end by integration/policy (make test).
	"$PATRONUS" policy matrix --from "$ROOT/policy/testdata/backend-policy" --ports 8080,5432 | sed 's/^/    /'
	echo
	"$PATRONUS" policy trace --from default/frontend --to default/backend --port 8080 --protocol TCP \
		--from-dir "$ROOT/policy/testdata/backend-policy" | sed 's/^/    /'
	"$PATRONUS" policy trace --from default/database --to default/backend --port 8080 --protocol TCP \
		--from-dir "$ROOT/policy/testdata/backend-policy" | sed 's/^/    /'
}

scenario_mesh() {
	scenario "The gateway mesh: agents find each other with no configuration (multicast + Serf)"
	PATRONUS_BIN=$PATRONUS ./scripts/mesh-demo.sh 4 2>&1 | sed 's/^/    /'
	echo "    (removed by make demo-down)"
}

scenario_not_built() {
	scenario "Not in this demo yet"
	skipped "a cross-cluster ping through the agents' WireGuard tunnel (built and tested: go test ./integration/agent -run TestGatewayAgentsBringUpTunnel -v)"
	skipped "a failover of pod traffic between WAN paths (probing and selection: go test ./integration/paths -v; steering pod traffic is not built)"
	skipped "a clusterset.local call (ServiceImports and the ClusterSetIP datapath exist; DNS through CoreDNS is not built)"
	skipped "the 2 x 2 Kubernetes lab with Patronus as a DaemonSet runs separately: make lab, make conformance, make lab-down (docs/LAB.md)"
}

main() {
	local teardown=0
	case "${1:-}" in
	down) [ "$(id -u)" = 0 ] || die "run as root"; down; echo "demo removed"; return 0 ;;
	--teardown) teardown=1 ;;
	"") ;;
	*) die "usage: $0 [--teardown | down]" ;;
	esac
	[ "$(id -u)" = 0 ] || die "run as root: the demo makes a network namespace and runs containerd"
	if [ -d "$DEMO_DIR" ] || [ -e "/run/netns/$NETNS" ]; then
		step "removing the previous demo first"
		down
	fi
	local start=$SECONDS
	prepare
	start_node
	local s
	for s in "${SCENARIOS[@]}"; do "$s"; done
	echo
	echo "demo ran in $((SECONDS - start))s"
	if [ $teardown = 1 ]; then
		down
		echo "demo finished and removed"
		return 0
	fi
	cat <<EOF2
${B}The demo node keeps running.${N} Look around:
  $DEMO_DIR/crictl pods                                    the node's pods
  $DEMO_DIR/crictl exec -it \$(cat $DEMO_DIR/pod-a.ctr) sh   a shell in pod-a
  ip netns exec $NETNS ip addr                   the node's network
Remove it with: make demo-down   (or ./scripts/demo.sh down)
EOF2
}

main "$@"

#!/usr/bin/env bash
# The Kubernetes lab: N clusters x M nodes on this machine, each node in its own network
# namespace with containerd + kubelet + kube-proxy (nftables), a control plane per cluster in
# a network namespace of its own, an underlay bridge per cluster (in a namespace too), and
# Patronus installed the way a user installs it: `kubectl apply -f manifests/`.
# The host is never changed: no root-namespace links, routes or sysctls; kubelet's host-wide
# sysctls are faked in the nodes' private mount namespace; cgroups live under a root of our
# own (/patronus-<node netns> in every hierarchy). See docs/LAB.md.
#
#   lab.sh up [--clusters N] [--nodes M]   build what is missing, bring the lab up
#   lab.sh down                            remove everything `up` made (also after a failure)
#   lab.sh kubectl CLUSTER ARGS...         kubectl against cluster CLUSTER (1, 2, ...)
#   lab.sh exec CLUSTER NODE CMD...        run CMD in node NODE's network + mount namespace
#   lab.sh status                          what is running
#   lab.sh smoke                           pod IPs, pod-to-pod (intra/inter node), DNS,
#                                          pod-to-pod across clusters (ping, TCP) through the tunnel
#   lab.sh wan [PAIR LINK [wanem flags]]   show the WAN links, or impair one: PAIR "1-2", LINK 1|2,
#                                          flags of `patronus wanem set` (--delay 50ms --loss 5 ...)
#                                          or "clear" (no impairment)
#
# Environment: LAB_DIR (state, default /var/tmp/patronus-lab), LAB_PREFIX (namespace prefix,
# default plab; a second lab needs its own LAB_PREFIX and LAB_DIR), LAB_CLUSTERS, LAB_NODES,
# PATRONUS_BIN (default: `make build` -> bin/patronus).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
# shellcheck source=../lib/common.sh
. "$ROOT/scripts/lib/common.sh"

LAB_DIR=${LAB_DIR:-/var/tmp/patronus-lab}
CLUSTERS=${LAB_CLUSTERS:-2}
NODES=${LAB_NODES:-2}
PREFIX=${LAB_PREFIX:-plab}
# Masquerade of pod traffic leaving the cluster CIDR (ConfigMap key masquerade; as shipped).
LAB_MASQUERADE=${LAB_MASQUERADE:-true}
# Node-to-node encryption inside each cluster (ConfigMap key node-encryption: none | wireguard).
LAB_NODE_ENCRYPTION=${LAB_NODE_ENCRYPTION:-none}

log() { echo "lab: $(date +%H:%M:%S) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Addressing (per cluster C): underlay 10.77.C.0/24 with the bridge's address .1, the
# control plane .2, node I .(10+I); pods 10.(243+C).0.0/16 (a /24 per node, allocated by
# kube-controller-manager); Services 10.96.0.0/12 in every cluster (kubernetes .1, DNS .10).
# Node 1 of each cluster is its gateway (label patronus.io/gateway=true). WAN: two links per
# cluster pair (see wan_up).
underlay_net() { echo "10.77.$1"; }
gw_ip() { echo "10.77.$1.11"; }
pod_cidr() { echo "10.$((243 + $1)).0.0/16"; }
SERVICE_CIDR=10.96.0.0/12
KUBERNETES_SVC=10.96.0.1
DNS_SVC=10.96.0.10

ns_ul() { echo "$PREFIX-c$1-ul"; }
ns_cp() { echo "$PREFIX-c$1-cp"; }
ns_node() { echo "$PREFIX-c$1-n$2"; }
node_name() { echo "c$1-n$2"; }
cdir() { echo "$LAB_DIR/c$1"; }
ndir() { echo "$LAB_DIR/c$1/n$2"; }

inns() { local n=$1; shift; nsenter --net="/run/netns/$n" -- "$@"; }

# start NAME LOGFILE PIDFILE NETNS [--mount-of PID] CMD...: a detached process in NETNS
# (and in the mount namespace of PID), its pid recorded for `down`.
start() {
	local name=$1 logf=$2 pidf=$3 netns=$4
	shift 4
	local mnt=()
	if [ "$1" = --mount-of ]; then mnt=(--mount="/proc/$2/ns/mnt"); shift 2; fi
	setsid nsenter --net="/run/netns/$netns" "${mnt[@]}" -- "$@" >"$logf" 2>&1 </dev/null &
	echo $! >"$pidf"
	log "started $name (pid $!, log $logf)"
}

wait_for() { # DESCRIPTION SECONDS CMD...: CMD succeeds within SECONDS, else the lab fails
	local what=$1 secs=$2
	shift 2
	wait_until "$secs" 0.2 "$@" || die "$what: not ready after ${secs}s"
}

# ---------------------------------------------------------------------------------------
# builds

build_all() {
	local t0
	t0=$(date +%s)
	log "building components (cached after the first run; the first takes tens of minutes)"
	K8S_BIN=$(./scripts/build-k8s.sh)
	LAB_BIN=$(./scripts/lab/build.sh --lab-up)
	if [ -z "${PATRONUS_BIN:-}" ]; then
		PATRONUS_BIN=$ROOT/bin/patronus
		if ! nice -n 10 make -s build >&2; then
			[ -x "$PATRONUS_BIN" ] || die "make build failed and there is no bin/patronus"
			log "WARNING: make build failed; using the existing bin/patronus ($(date -r "$PATRONUS_BIN" +%H:%M))"
		fi
	fi
	export LAB_BIN PATRONUS_BIN
	CNI_PLUGINS=$(./scripts/build-cni-plugins.sh)
	mapfile -t IMAGES < <(./scripts/images.sh --lab)
	log "components and images ready in $(( $(date +%s) - t0 ))s"
	cat >"$LAB_DIR/bin.env" <<ENV
K8S_BIN=$K8S_BIN
LAB_BIN=$LAB_BIN
PATRONUS_BIN=$PATRONUS_BIN
CNI_PLUGINS=$CNI_PLUGINS
ENV
}

load_bins() {
	[ -f "$LAB_DIR/bin.env" ] || die "no lab at $LAB_DIR (run lab.sh up)"
	# shellcheck disable=SC1091
	. "$LAB_DIR/bin.env"
}

# ---------------------------------------------------------------------------------------
# network

new_netns() {
	ip netns add "$1"
	echo "$1" >>"$LAB_DIR/netns.list"
	ip -n "$1" link set lo up
}

# attach NETNS ADDR C PEERNAME: veth eth0 in NETNS with ADDR/24, its peer on cluster C's
# underlay bridge; default route via the bridge address.
attach() {
	local netns=$1 addr=$2 c=$3 peer=$4 ul
	ul=$(ns_ul "$c")
	ip -n "$ul" link add "$peer" type veth peer name eth0 netns "$netns"
	ip -n "$ul" link set "$peer" master br0 up
	ip -n "$netns" addr add "$addr/24" dev eth0
	ip -n "$netns" link set eth0 up
	ip -n "$netns" route add default via "$(underlay_net "$c").1"
}

underlay_up() {
	local c=$1 ul
	ul=$(ns_ul "$c")
	new_netns "$ul"
	ip -n "$ul" link add br0 type bridge
	ip -n "$ul" addr add "$(underlay_net "$c").1/24" dev br0
	ip -n "$ul" link set br0 up
	ip netns exec "$ul" sysctl -qw net.ipv4.ip_forward=1
}

# ---------------------------------------------------------------------------------------
# control plane

kubeconfig() { # FILE SERVER CERTNAME PKIDIR
	cat >"$1" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: $2
    certificate-authority: $4/ca.crt
users:
- name: $3
  user:
    client-certificate: $4/$3.crt
    client-key: $4/$3.key
contexts:
- name: lab
  context: {cluster: lab, user: $3}
current-context: lab
YAML
}

cp_up() {
	local c=$1 d cp ip p server
	d=$(cdir "$c")
	cp=$(ns_cp "$c")
	ip=$(underlay_net "$c").2
	p=$d/pki
	server=https://$ip:6443
	mkdir -p "$d/logs" "$d/pids" "$p"
	new_netns "$cp"
	attach "$cp" "$ip" "$c" cp

	log "cluster $c: certificates"
	go build -o "$LAB_DIR/pki" ./scripts/lab/pki
	local P=("$LAB_DIR/pki" -dir "$p")
	"${P[@]}" ca
	"${P[@]}" sa
	"${P[@]}" cert apiserver kube-apiserver "" "$ip,$KUBERNETES_SVC,127.0.0.1,localhost,kubernetes,kubernetes.default,kubernetes.default.svc,kubernetes.default.svc.cluster.local"
	"${P[@]}" cert admin lab-admin system:masters
	"${P[@]}" cert apiserver-kubelet kube-apiserver-kubelet-client system:masters
	"${P[@]}" cert controller-manager system:kube-controller-manager
	"${P[@]}" cert scheduler system:kube-scheduler
	"${P[@]}" cert kube-proxy system:kube-proxy
	for u in admin controller-manager scheduler kube-proxy; do kubeconfig "$d/$u.kubeconfig" "$server" "$u" "$p"; done

	start etcd "$d/logs/etcd.log" "$d/pids/etcd" "$cp" "$K8S_BIN/etcd" \
		--name=lab --data-dir="$d/etcd" \
		--listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
		--listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
		--initial-cluster=lab=http://127.0.0.1:2380 --unsafe-no-fsync --log-level=warn
	start kube-apiserver "$d/logs/kube-apiserver.log" "$d/pids/kube-apiserver" "$cp" "$K8S_BIN/kube-apiserver" \
		--etcd-servers=http://127.0.0.1:2379 \
		--bind-address=0.0.0.0 --advertise-address="$ip" --secure-port=6443 \
		--tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
		--client-ca-file="$p/ca.crt" \
		--kubelet-client-certificate="$p/apiserver-kubelet.crt" --kubelet-client-key="$p/apiserver-kubelet.key" \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--kubelet-preferred-address-types=InternalIP \
		--service-cluster-ip-range="$SERVICE_CIDR" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
		--allow-privileged=true --cert-dir="$d/apiserver-certs" --profiling=false --v=1
	wait_for "cluster $c kube-apiserver" 60 inns "$cp" curl -sf --cacert "$p/ca.crt" \
		--cert "$p/admin.crt" --key "$p/admin.key" "$server/readyz"
	start kube-controller-manager "$d/logs/kube-controller-manager.log" "$d/pids/kube-controller-manager" "$cp" \
		"$LAB_BIN/kube-controller-manager" --kubeconfig="$d/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$d/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$d/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials \
		--service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
		--allocate-node-cidrs --cluster-cidr="$(pod_cidr "$c")" --node-cidr-mask-size=24 \
		--service-cluster-ip-range="$SERVICE_CIDR" --v=1
	start kube-scheduler "$d/logs/kube-scheduler.log" "$d/pids/kube-scheduler" "$cp" \
		"$LAB_BIN/kube-scheduler" --kubeconfig="$d/scheduler.kubeconfig" \
		--authentication-kubeconfig="$d/scheduler.kubeconfig" \
		--authorization-kubeconfig="$d/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false --v=1

	# A kubectl for this cluster: runs in the control plane's namespace with the admin cert.
	cat >"$d/kubectl" <<SH
#!/bin/sh
exec nsenter --net=/run/netns/$cp -- "$K8S_BIN/kubectl" --kubeconfig "$d/admin.kubeconfig" "\$@"
SH
	chmod +x "$d/kubectl"
	wait_for "cluster $c default ServiceAccount" 60 "$d/kubectl" get serviceaccount default
}

# ---------------------------------------------------------------------------------------
# nodes

node_up() {
	local c=$1 i=$2 d nd n name ip cpid
	d=$(cdir "$c")
	nd=$(ndir "$c" "$i")
	n=$(ns_node "$c" "$i")
	name=$(node_name "$c" "$i")
	ip=$(underlay_net "$c").$((10 + i))
	mkdir -p "$nd"/{etc-upper,etc-work,opt-upper,opt-work,sysctl,bpf}
	new_netns "$n"
	attach "$n" "$ip" "$c" "n$i"
	# What a node's OS would set: it forwards packets.
	ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1

	# Its cgroup root in every v1 hierarchy (node.sh's cgroup-parent; removed by down).
	local h
	for h in /sys/fs/cgroup/*/; do
		[ "$(stat -f -c %T "$h")" = cgroupfs ] || continue
		mkdir -p "$h/patronus-$n"
		if [ -f "$h/cpuset.cpus" ]; then
			cat "$h/cpuset.cpus" >"$h/patronus-$n/cpuset.cpus"
			cat "$h/cpuset.mems" >"$h/patronus-$n/cpuset.mems"
		fi
	done

	# What the node's OS ships (the kubernetes-cni package on a real node): the reference
	# loopback plugin, which containerd 1.6 runs for every pod's lo. Patronus itself is
	# installed by its DaemonSet.
	mkdir -p "$nd/containerd/cni/bin"
	cp "$CNI_PLUGINS/loopback" "$nd/containerd/cni/bin/loopback"
	SANDBOX_IMAGE=registry.k8s.io/pause:3.10.2 ./scripts/containerd/node.sh up "$nd/containerd" "$n" >&2
	cpid=$(cat "$nd/containerd/containerd.pid")
	# The node's private mount namespace (containerd's; kubelet and kube-proxy join it):
	# /etc and /opt are overlays so the node's hostPath writes (/etc/cni/net.d,
	# /opt/cni/bin) land in its state dir; kubelet's host-wide sysctls are files of ours;
	# a bpffs of its own, shared so the DaemonSet's Bidirectional mount works.
	echo 1 >"$nd/sysctl/overcommit_memory"
	echo 10 >"$nd/sysctl/panic"
	echo 1 >"$nd/sysctl/panic_on_oops"
	nsenter --mount="/proc/$cpid/ns/mnt" -- sh -ec '
		nd=$1
		mount -t overlay overlay -o lowerdir=/etc,upperdir=$nd/etc-upper,workdir=$nd/etc-work /etc
		mount -t overlay overlay -o lowerdir=/opt,upperdir=$nd/opt-upper,workdir=$nd/opt-work /opt
		mkdir -p /etc/cni/net.d /opt/cni/bin
		mount --bind $nd/containerd/cni/net.d /etc/cni/net.d
		mount --bind $nd/containerd/cni/bin /opt/cni/bin
		mount --bind $nd/sysctl/overcommit_memory /proc/sys/vm/overcommit_memory
		mount --bind $nd/sysctl/panic /proc/sys/kernel/panic
		mount --bind $nd/sysctl/panic_on_oops /proc/sys/kernel/panic_on_oops
		# A bpffs the host may have (copied into this namespace) is detached here only;
		# the node gets its own, else containerd sees the host copy, which is not shared.
		while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done
		mount -t bpf bpf /sys/fs/bpf
		mount --make-shared /sys/fs/bpf
		echo "$2" >/etc/hostname
	' sh "$nd" "$name"

	local img
	for img in "${IMAGES[@]}"; do
		ctr --address "$nd/containerd/containerd.sock" -n k8s.io images import "${img#* }" >/dev/null
	done
	log "node $name: images imported"

	local p=$d/pki
	"$LAB_DIR/pki" -dir "$p" cert "kubelet-$name" "system:node:$name" system:nodes "$ip,$name"
	kubeconfig "$nd/kubelet.kubeconfig" "https://$(underlay_net "$c").2:6443" "kubelet-$name" "$p"
	printf 'nameserver %s.1\n' "$(underlay_net "$c")" >"$nd/resolv.conf"
	cat >"$nd/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$nd/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /patronus-$n
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: false
address: $ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: $p/kubelet-$name.crt
tlsPrivateKeyFile: $p/kubelet-$name.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $p/ca.crt}
authorization: {mode: AlwaysAllow}
clusterDNS: [$DNS_SVC]
clusterDomain: cluster.local
resolvConf: $nd/resolv.conf
# Images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
podPidsLimit: -1
YAML
	# Node 1 is the cluster's gateway: the label is on the Node before its agent starts
	# (the agent reads the marks once, at start).
	local labels=()
	[ "$i" != 1 ] || labels=(--node-labels=patronus.io/gateway=true)
	start "kubelet $name" "$nd/kubelet.log" "$nd/kubelet.pid" "$n" --mount-of "$cpid" \
		"$LAB_BIN/kubelet" --config="$nd/kubelet.yaml" --kubeconfig="$nd/kubelet.kubeconfig" \
		--hostname-override="$name" --node-ip="$ip" --root-dir=/var/lib/kubelet "${labels[@]}" --v=1
	cat >"$nd/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $d/kube-proxy.kubeconfig}
hostnameOverride: $name
clusterCIDR: $(pod_cidr "$c")
# CAP_SYS_RESOURCE is missing here, and the conntrack limits are host-wide: leave them.
oomScoreAdj: 0
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
YAML
	start "kube-proxy $name" "$nd/kube-proxy.log" "$nd/kube-proxy.pid" "$n" --mount-of "$cpid" \
		"$LAB_BIN/kube-proxy" --config="$nd/kube-proxy.yaml" --v=1
}

# The control plane must route replies to pods (it is not a node): one route per node's
# pod CIDR, as an underlay router would have.
# nodes_ready KUBECTL: every one of the NODES nodes has registered and is Ready.
nodes_ready() {
	local ready
	ready=$("$1" get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c '^True$') || return 1
	[ "$ready" -eq "$NODES" ]
}

cp_routes() {
	local c=$1 i cidr
	for i in $(seq 1 "$NODES"); do
		local tries=0
		cidr=
		# kube-controller-manager allocates spec.podCIDR shortly after a node registers;
		# a failed kubectl call is retried too (an `[ -n ] && ...` as the function's last
		# command once ended `up` with rc=1 after the nodes were Ready).
		while [ -z "$cidr" ] && [ $tries -lt 60 ]; do
			cidr=$("$(cdir "$c")/kubectl" get node "$(node_name "$c" "$i")" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)
			[ -n "$cidr" ] || { tries=$((tries + 1)); sleep 0.5; }
		done
		if [ -n "$cidr" ]; then
			ip -n "$(ns_cp "$c")" route replace "$cidr" via "$(underlay_net "$c").$((10 + i))"
		else
			log "WARNING: node $(node_name "$c" "$i") has no spec.podCIDR after 30s: the control plane has no route to its pods"
		fi
	done
}

# mesh_keys: a cluster signing key per cluster and one gossip key for the clusterset, made
# the way an operator makes them (`patronus mesh keygen`), so each cluster's ConfigMap can
# pin the others' public keys before any agent starts.
mesh_keys() {
	local c d
	"$PATRONUS_BIN" mesh keygen --gossip --out "$LAB_DIR/gossip.key"
	for c in $(seq 1 "$CLUSTERS"); do
		d=$(cdir "$c")
		mkdir -p "$d"
		"$PATRONUS_BIN" mesh keygen --out "$d/cluster.key" >"$d/cluster.pub"
	done
}

# remote_clusters C: the ConfigMap's remote-clusters for cluster C: every other cluster's
# gateway (its node address, reached over WAN link 1 of the pair), its pod CIDR, its pinned
# cluster key, and its address on WAN link 2 as a second path.
remote_clusters() {
	local c=$1 r out=""
	for r in $(seq 1 "$CLUSTERS"); do
		[ "$r" != "$c" ] || continue
		out+="- {id: lab-c$r, endpoint: '$(gw_ip "$r"):51820', cidr: $(pod_cidr "$r"), gossip: '$(gw_ip "$r"):7946', publicKey: '$(cat "$(cdir "$r")/cluster.pub")', paths: ['$(wan_addr "$c" "$r" 2 "$r"):51820']}\\n"
	done
	printf '%s' "${out:-[]}"
}

# path_bandwidth C: the ConfigMap's path-bandwidth for cluster C: WAN link 1 100 Mbit/s,
# link 2 1000 Mbit/s, so the bulk class takes link 2 and latency-sensitive the faster one.
path_bandwidth() {
	local c=$1 r out=""
	for r in $(seq 1 "$CLUSTERS"); do
		[ "$r" != "$c" ] || continue
		out+="${out:+, }lab-c$r/$(gw_ip "$r"): 100, lab-c$r/$(wan_addr "$c" "$r" 2 "$r"): 1000"
	done
	printf '{%s}' "$out"
}

install_patronus() {
	local c=$1 k d
	k=$(cdir "$c")/kubectl
	d=$(cdir "$c")
	log "cluster $c: kubectl apply -f manifests/"
	"$k" apply -f manifests/ >&2
	# The mesh's keys, before any agent starts (else the first agent makes its own cluster
	# key, which the other clusters have not pinned).
	"$k" -n kube-system create secret generic patronus-cluster-key \
		--from-file=private-key=<(base64 -d "$d/cluster.key") --from-literal=public-key="$(cat "$d/cluster.pub")" >&2
	"$k" -n kube-system create secret generic patronus-gossip-key \
		--from-file=key=<(base64 -d "$LAB_DIR/gossip.key") >&2
	# The lab's own values for this cluster (the ConfigMap ships an example). Masquerade
	# off: see docs/LAB.md (pod traffic to a remote cluster must keep its pod address).
	"$k" -n kube-system patch configmap patronus-config --type merge -p \
		"{\"data\":{\"cluster-id\":\"lab-c$c\",\"cluster-cidr\":\"$(pod_cidr "$c")\",\"service-cidr\":\"$SERVICE_CIDR\",\"remote-clusters\":\"$(remote_clusters "$c")\",\"masquerade\":\"$LAB_MASQUERADE\",\"node-encryption\":\"$LAB_NODE_ENCRYPTION\",\"path-bandwidth\":\"$(path_bandwidth "$c")\"}}" >&2
}

install_coredns() {
	local c=$1
	sed "s/@DNS_SVC@/$DNS_SVC/" scripts/lab/coredns.yaml | "$(cdir "$c")/kubectl" apply -f - >&2
}

up() {
	while [ $# -gt 0 ]; do
		case "$1" in
		--clusters) CLUSTERS=$2; shift 2 ;;
		--nodes) NODES=$2; shift 2 ;;
		*) die "unknown option $1" ;;
		esac
	done
	[ "$(id -u)" = 0 ] || die "the lab needs root (network namespaces, mounts, cgroups)"
	if [ -f "$LAB_DIR/netns.list" ]; then die "a lab is already up in $LAB_DIR (lab.sh down first)"; fi
	mkdir -p "$LAB_DIR"
	echo "CLUSTERS=$CLUSTERS NODES=$NODES" >"$LAB_DIR/shape"
	: >"$LAB_DIR/netns.list"
	build_all
	local t0 c i
	t0=$(date +%s)
	log "bringing up $CLUSTERS cluster(s) x $NODES node(s) in $LAB_DIR"
	mesh_keys
	for c in $(seq 1 "$CLUSTERS"); do
		underlay_up "$c"
		cp_up "$c"
		install_patronus "$c"
		install_coredns "$c"
		for i in $(seq 1 "$NODES"); do node_up "$c" "$i"; done
	done
	wan_up
	for c in $(seq 1 "$CLUSTERS"); do
		local k
		k=$(cdir "$c")/kubectl
		log "cluster $c: waiting for the nodes to become Ready (through Patronus)"
		# All NODES registered and Ready: `kubectl wait --all` alone succeeds on a cluster
		# where no node has registered yet.
		wait_for "cluster $c nodes Ready" 180 nodes_ready "$k"
		cp_routes "$c"
		wait_for "cluster $c CoreDNS" 120 "$k" -n kube-system rollout status deployment/coredns --timeout=5s
		"$k" get nodes -o wide >&2
	done
	log "lab up in $(( $(date +%s) - t0 ))s (after builds); kubectl: scripts/lab/lab.sh kubectl 1 get pods -A"
}

# ---------------------------------------------------------------------------------------
# WAN: two links per cluster pair between the pair's gateways (node 1 of each cluster).
#
# Link X (1, 2) of pair A-B (A < B) is network namespace $PREFIX-wA-B-X, a router with one
# veth to each gateway: cluster C's side is 10.78.K.(16C)/28 (the router .16C+1, the
# gateway's interface "wanR-X" .16C+2, R the other cluster), K = the link's number
# (pairs in order, two links each). Each gateway routes the other gateway's node address
# (its tunnel endpoint and gossip address, what the agent announces) over link 1, and its
# link-2 address over link 2, with its own node address as source.
#
# The router DNATs the UDP traffic of the WireGuard port (51820) and of the path probes
# (7948) arriving from one gateway for the other to a `patronus wanem` relay of its own
# (one per direction and port: four per link, six on link 2 with its per-path WireGuard
# port 51821), which forwards it to the other gateway's
# address on that link; its answers come back through the relay and conntrack restores the
# address the sender used. Gossip (Serf's TCP and UDP, 7946) is routed, not relayed: the
# relay is UDP only. `lab.sh wan PAIR LINK FLAGS` impairs all four relays of the link.

pairs() { local a b; for a in $(seq 1 "$CLUSTERS"); do for b in $(seq $((a + 1)) "$CLUSTERS"); do echo "$a $b"; done; done; }
# link_num A B X: K of link X of the pair of clusters A and B (either order).
link_num() {
	local lo=$(( $1 < $2 ? $1 : $2 )) hi=$(( $1 < $2 ? $2 : $1 )) p=0 a b
	while read -r a b; do
		p=$((p + 1))
		if [ "$a" = "$lo" ] && [ "$b" = "$hi" ]; then echo $((2 * (p - 1) + $3)); return; fi
	done < <(pairs)
	die "no WAN link between clusters $1 and $2"
}
# wan_addr A B X C: the address of cluster C's gateway on link X of pair A-B.
wan_addr() { echo "10.78.$(link_num "$1" "$2" "$3").$((16 * $4 + 2))"; }
wan_router() { echo "10.78.$(link_num "$1" "$2" "$3").$((16 * $4 + 1))"; }
ns_wan() { local lo=$(( $1 < $2 ? $1 : $2 )) hi=$(( $1 < $2 ? $2 : $1 )); echo "$PREFIX-w$lo-$hi-$3"; }
wan_dir() { echo "$LAB_DIR/wan/$(ns_wan "$@")"; }

wan_link_up() {
	local a=$1 b=$2 x=$3 w k wd c r gw
	w=$(ns_wan "$a" "$b" "$x")
	k=$(link_num "$a" "$b" "$x")
	wd=$(wan_dir "$a" "$b" "$x")
	mkdir -p "$wd"
	new_netns "$w"
	# DNAT into the relays; empty output/postrouting nat chains so the answers of the
	# relays (local traffic) get their source restored. Loaded before any link exists:
	# a gateway's prober already running would otherwise have its first probes tracked
	# un-NATed, and a probe every 50 ms keeps such a conntrack entry alive for good.
	# Link X also carries the gateways' per-path WireGuard devices of path index X-1
	# (port 51820+X-1: agent --path-tunnels, docs/CONTRACT.md).
	local rules="" port ports="51820 7948"
	[ "$x" -gt 1 ] && ports+=" $((51820 + x - 1))"
	for c in "$a" "$b"; do
		r=$(( c == a ? b : a ))
		for port in $ports; do
			rules+="add rule ip labwan pre iifname \"c$c\" ip daddr { $(gw_ip "$r"), $(wan_addr "$a" "$b" "$x" "$r") } udp dport $port dnat to $(wan_router "$a" "$b" "$x" "$c"):$port
"
		done
	done
	ip netns exec "$w" nft -f - <<NFT
table ip labwan {
	chain pre { type nat hook prerouting priority -100; }
	chain out { type nat hook output priority -100; }
	chain post { type nat hook postrouting priority 100; }
}
$rules
NFT
	ip netns exec "$w" sysctl -qw net.ipv4.ip_forward=1
	for c in "$a" "$b"; do
		r=$(( c == a ? b : a ))
		gw=$(ns_node "$c" 1)
		ip -n "$w" link add "c$c" type veth peer name "wan$r-$x" netns "$gw"
		ip -n "$w" addr add "$(wan_router "$a" "$b" "$x" "$c")/28" dev "c$c"
		ip -n "$w" link set "c$c" up
		ip -n "$gw" addr add "$(wan_addr "$a" "$b" "$x" "$c")/28" dev "wan$r-$x"
		ip -n "$gw" link set "wan$r-$x" up
		# The router reaches each gateway's node address on its side.
		ip -n "$w" route add "$(gw_ip "$c")/32" via "$(wan_addr "$a" "$b" "$x" "$c")"
		# The gateway: the whole link network through the router (replies of the relays
		# come from the router's address on this side); link 1 also carries the other
		# gateway's node address, link 2 its link-2 address.
		ip -n "$gw" route add "10.78.$k.0/24" via "$(wan_router "$a" "$b" "$x" "$c")" src "$(gw_ip "$c")"
		if [ "$x" = 1 ]; then
			ip -n "$gw" route add "$(gw_ip "$r")/32" via "$(wan_router "$a" "$b" "$x" "$c")" src "$(gw_ip "$c")"
		fi
	done
	for c in "$a" "$b"; do
		r=$(( c == a ? b : a ))
		for port in $ports; do
			start "wanem $w c$c->c$r :$port" "$wd/relay-c$c-$port.log" "$wd/relay-c$c-$port.pid" "$w" \
				"$PATRONUS_BIN" wanem run --listen "$(wan_router "$a" "$b" "$x" "$c"):$port" \
				--target "$(wan_addr "$a" "$b" "$x" "$r"):$port" --control "$wd/c$c-$port.sock"
		done
	done
	echo "$a $b $x $w" >>"$LAB_DIR/wan/links"
}

wan_up() {
	[ "$CLUSTERS" -ge 2 ] || return 0
	mkdir -p "$LAB_DIR/wan"
	: >"$LAB_DIR/wan/links"
	local a b x
	while read -r a b; do
		for x in 1 2; do wan_link_up "$a" "$b" "$x"; done
		log "WAN: clusters $a and $b joined by links 1 ($(wan_addr "$a" "$b" 1 "$a") - $(wan_addr "$a" "$b" 1 "$b")) and 2 ($(wan_addr "$a" "$b" 2 "$a") - $(wan_addr "$a" "$b" 2 "$b")), each through wanem relays"
	done < <(pairs)
}

# wan [PAIR LINK [FLAGS|clear]]: without arguments, every relay's impairment and counters;
# with PAIR ("1-2") and LINK (1, 2), `patronus wanem set FLAGS` on the link's four relays
# ("clear": no delay, jitter, loss or blackhole).
wan() {
	load_bins
	. "$LAB_DIR/shape"
	[ -f "$LAB_DIR/wan/links" ] || die "no WAN links in this lab (one cluster?)"
	if [ $# = 0 ]; then
		local a b x w s
		while read -r a b x w; do
			echo "== WAN link $x of clusters $a-$b (netns $w): $(wan_addr "$a" "$b" "$x" "$a") <-> $(wan_addr "$a" "$b" "$x" "$b")"
			for s in "$LAB_DIR/wan/$w"/*.sock; do
				echo "-- relay $(basename "$s" .sock)"
				"$PATRONUS_BIN" wanem show --control "$s" || true
			done
		done <"$LAB_DIR/wan/links"
		return 0
	fi
	local pair=$1 x=${2:?usage: lab.sh wan PAIR LINK [wanem set flags]} a b s
	shift 2
	a=${pair%-*} b=${pair#*-}
	[ -d "$(wan_dir "$a" "$b" "$x")" ] || die "no WAN link $x between clusters $a and $b"
	if [ "${1:-}" = clear ]; then set -- --delay 0s --jitter 0s --loss 0 --blackhole=false; fi
	[ $# -gt 0 ] || die "usage: lab.sh wan PAIR LINK clear | --delay D --jitter D --loss PCT --blackhole[=false]"
	for s in "$(wan_dir "$a" "$b" "$x")"/*.sock; do
		echo "$(basename "$s" .sock): $("$PATRONUS_BIN" wanem set --control "$s" "$@")"
	done
}

# ---------------------------------------------------------------------------------------
# teardown

# alive and starttime (a process named by pid and start time): scripts/lib/common.sh.

# Names `up` gives its namespaces (a prefix match alone could take another lab's whose
# prefix starts with ours, or a test's).
our_netns() { grep -E "^$PREFIX-(c[0-9]+-(ul|cp|n[0-9]+)|w[0-9]+-[0-9]+-[0-9]+)\$" || true; }

# members [COMM]: "pid:starttime" of every live process that belongs to this lab: its network
# namespace is one of the lab's (LAB_NS_INODES), or its cgroup is under one of the lab's cgroup
# roots (a pod's containers, in network namespaces of their own). Pid files are never trusted:
# pids wrap, and a stale one may name another lab's process. With COMM, only processes of
# that name.
members() {
	local pid cand
	# One stat and one grep over all of /proc (a loop forking per process takes seconds).
	cand=$(
		stat -L -c '%i %n' /proc/[0-9]*/ns/net 2>/dev/null |
			awk -v inodes="$LAB_NS_INODES" 'BEGIN { n = split(inodes, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
				want[$1] { split($2, f, "/"); print f[3] }'
		grep -l ":/patronus-$PREFIX-c[0-9]*-n[0-9]*\(/.*\)\?\$" /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3 || true
	)
	if [ -n "${1:-}" ] && [ -n "$cand" ]; then
		cand=$(for pid in $cand; do [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$1" ] || echo "$pid"; done)
	fi
	for pid in $(echo "$cand" | sort -un); do
		alive "$pid" || continue
		echo "$pid:$(starttime "$pid")"
	done
}

# stop_members [COMM]: SIGTERM to the lab's processes (of that name), up to 5 s for them to
# exit, then SIGKILL to those still there. Each signal goes to a process just found in the
# lab and still having the start time it had then.
stop_members() {
	local ps list
	list=$(members "$@")
	[ -n "$list" ] || return 0
	for ps in $list; do
		[ "$(starttime "${ps%%:*}")" = "${ps#*:}" ] && kill -TERM "${ps%%:*}" 2>/dev/null || true
	done
	for _ in $(seq 1 50); do
		[ -n "$(members "$@")" ] || return 0
		sleep 0.1
	done
	for _ in $(seq 1 30); do
		list=$(members "$@")
		[ -n "$list" ] || return 0
		for ps in $list; do
			[ "$(starttime "${ps%%:*}")" = "${ps#*:}" ] && kill -KILL "${ps%%:*}" 2>/dev/null || true
		done
		sleep 0.1
	done
}

# describe "pid:start"...: pid, name and command line of each, for an error message.
describe() {
	local ps
	for ps in "$@"; do
		echo "pid ${ps%%:*} ($(tr '\0' ' ' <"/proc/${ps%%:*}/cmdline" 2>/dev/null | cut -c1-100))"
	done
}

# down: in this order, so nothing re-creates what was just removed: the kubelets (a running
# kubelet re-creates a pod sandbox removed under it), then each node's pods and containerd
# (node.sh down: CNI DEL, shims, containers, cgroups), then every other process of the lab
# (control planes, kube-proxy, WAN relays, leftovers of a failed bring-up), the cgroup roots,
# the namespaces. Then it checks that no process, cgroup, namespace or mount of the lab is
# left, and exits non-zero naming what is.
down() {
	[ -d "$LAB_DIR" ] || { log "nothing to remove"; return 0; }
	local nslist=() n status=0
	[ -f "$LAB_DIR/netns.list" ] && mapfile -t nslist < <(our_netns <"$LAB_DIR/netns.list")
	# Also any namespace named like ours (a bring-up that died before recording it).
	mapfile -t -O ${#nslist[@]} nslist < <(ip netns list 2>/dev/null | awk '{print $1}' | our_netns)
	mapfile -t nslist < <(printf '%s\n' "${nslist[@]}" | grep . | sort -u)
	LAB_NS_INODES=""
	for n in "${nslist[@]}"; do
		[ -e "/run/netns/$n" ] && LAB_NS_INODES="$LAB_NS_INODES $(stat -L -c %i "/run/netns/$n")"
	done
	log "removing the lab in $LAB_DIR (namespaces: ${nslist[*]:-none})"
	stop_members kubelet
	local nd crictl
	crictl=$(./scripts/containerd/build-crictl.sh 2>/dev/null || true)
	[ -z "$crictl" ] || crictl=$crictl/crictl
	for nd in "$LAB_DIR"/c*/n*/containerd; do
		[ -d "$nd" ] || continue
		CRICTL=$crictl ./scripts/containerd/node.sh down "$nd" >&2 || log "warning: node.sh down $nd failed (finishing below)"
	done
	stop_members
	# Cgroup roots (node.sh removes them too; this covers a node whose harness never ran).
	# A killed process may hold its cgroup until it is reaped: retry for a while.
	local d left=""
	for _ in $(seq 1 50); do
		for d in /sys/fs/cgroup/*/"patronus-$PREFIX-"c*-n*; do
			[ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
		done
		left=$(ls -d /sys/fs/cgroup/*/"patronus-$PREFIX-"c*-n* 2>/dev/null || true)
		[ -n "$left" ] || break
		sleep 0.1
	done
	local procs
	mapfile -t procs < <(members)
	if [ ${#procs[@]} -gt 0 ]; then
		log "ERROR: processes of the lab could not be stopped: $(describe "${procs[@]}" | paste -sd ';')"
		status=1
	fi
	if [ -n "$left" ]; then
		log "ERROR: cgroups could not be removed: $(echo $left)"
		status=1
	fi
	for n in "${nslist[@]}"; do
		ip netns del "$n" 2>/dev/null || true
		if [ -e "/run/netns/$n" ]; then log "ERROR: network namespace $n could not be removed"; status=1; fi
	done
	local mounts
	# (The namespaces' own mounts, /run/netns/NAME, were checked just above.)
	mounts=$(awk -v d="${LAB_DIR%/}" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo)
	if [ -n "$mounts" ]; then log "ERROR: mounts left: $(echo $mounts)"; status=1; fi
	if [ $status != 0 ]; then
		log "ERROR: the lab is not fully removed; $LAB_DIR kept (fix the above, then lab.sh down again)"
		return 1
	fi
	rm -rf "$LAB_DIR"
	log "lab removed: no process, cgroup, network namespace or mount of it is left"
}

# smoke: per cluster, one agnhost netexec pod per node; every pod fetches every other pod's
# /hostname by pod IP (intra- and inter-node) and the API server's /readyz by its DNS name
# (CoreDNS + the kubernetes Service through kube-proxy).
smoke() {
	local c k i node fails=0
	. "$LAB_DIR/shape"
	for c in $(seq 1 "$CLUSTERS"); do
		k=$(cdir "$c")/kubectl
		for i in $(seq 1 "$NODES"); do
			node=$(node_name "$c" "$i")
			"$k" get pod "smoke-$node" >/dev/null 2>&1 || "$k" run "smoke-$node" \
				--image=registry.k8s.io/e2e-test-images/agnhost:2.66.1 --image-pull-policy=IfNotPresent \
				--restart=Never --overrides="{\"spec\":{\"nodeName\":\"$node\"}}" -- netexec --http-port=8080 >/dev/null
		done
		"$k" wait --for=condition=Ready pod -l run --timeout=120s >/dev/null 2>&1 ||
			"$k" wait --for=condition=Ready pod --all -n default --timeout=60s >&2
		"$k" get pods -o wide >&2
		local pods ips p ip out
		pods=$("$k" get pods -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.podIP}{"\n"}{end}' | grep '^smoke-c')
		while read -r p _; do
			while read -r _ ip; do
				out=$("$k" exec "$p" -- curl -s -m 3 "http://$ip:8080/hostname" 2>&1) || out="FAILED: $out"
				echo "cluster $c: $p -> $ip:8080/hostname: $out"
				case "$out" in FAILED*) fails=$((fails + 1)) ;; esac
			done <<<"$pods"
			out=$("$k" exec "$p" -- curl -sk -m 5 -o /dev/null -w '%{http_code}' https://kubernetes.default.svc.cluster.local/readyz 2>&1) || out="FAILED: $out"
			echo "cluster $c: $p -> https://kubernetes.default.svc.cluster.local/readyz (DNS via CoreDNS, Service via kube-proxy): HTTP $out"
			case "$out" in FAILED*|000*) fails=$((fails + 1)) ;; esac
		done <<<"$pods"
	done
	smoke_crosscluster || fails=$((fails + $?))
	[ $fails = 0 ] || { log "smoke: $fails checks failed"; return 1; }
	log "smoke: all checks passed"
}

# smoke_crosscluster: for each cluster pair, a busybox pod on every node pings every smoke
# pod of the other cluster and fetches its /hostname over TCP (nc), both ways: from and to
# gateway nodes (the WireGuard tunnel between them) and non-gateway nodes (routed to their
# cluster's gateway by the agent). Returns the number of failed checks.
smoke_crosscluster() {
	[ "$CLUSTERS" -ge 2 ] || return 0
	local c i k fails=0 img=registry.k8s.io/e2e-test-images/busybox:1.37.0-2
	for c in $(seq 1 "$CLUSTERS"); do
		k=$(cdir "$c")/kubectl
		for i in $(seq 1 "$NODES"); do
			"$k" get pod "smoke-bb-$(node_name "$c" "$i")" >/dev/null 2>&1 || "$k" run "smoke-bb-$(node_name "$c" "$i")" \
				--image=$img --image-pull-policy=IfNotPresent --restart=Never \
				--overrides="{\"spec\":{\"nodeName\":\"$(node_name "$c" "$i")\",\"terminationGracePeriodSeconds\":1}}" \
				--command -- sleep 86400 >/dev/null
		done
	done
	for c in $(seq 1 "$CLUSTERS"); do
		for i in $(seq 1 "$NODES"); do
			"$(cdir "$c")/kubectl" wait --for=condition=Ready "pod/smoke-bb-$(node_name "$c" "$i")" --timeout=120s >/dev/null ||
				fails=$((fails + 1))
		done
	done
	local a b from to src dst ip out si di bb
	while read -r a b; do
		for from in "$a" "$b"; do
			to=$(( from == a ? b : a ))
			src=$(cdir "$from")/kubectl
			dst=$(cdir "$to")/kubectl
			for si in $(seq 1 "$NODES"); do
				bb=smoke-bb-$(node_name "$from" "$si")
				for di in $(seq 1 "$NODES"); do
					ip=$("$dst" get pod "smoke-$(node_name "$to" "$di")" -o jsonpath='{.status.podIP}')
					out=$("$src" exec "$bb" -- ping -c 2 -W 2 "$ip" 2>&1 | tail -2 | tr '\n' ' ') || out="FAILED: $out"
					echo "cluster $from -> $to: $bb ping $ip (smoke-$(node_name "$to" "$di")): $out"
					case "$out" in FAILED*) fails=$((fails + 1)) ;; esac
					# busybox's wget crashes in this image: HTTP by hand over nc.
					out=$("$src" exec "$bb" -- sh -c "printf 'GET /hostname HTTP/1.0\r\n\r\n' | nc -w 3 $ip 8080 | tail -1" 2>&1) || out="FAILED: $out"
					case "$out" in smoke-*) ;; *) out="FAILED: $out" ;; esac
					echo "cluster $from -> $to: $bb -> $ip:8080/hostname (TCP): $out"
					case "$out" in FAILED*) fails=$((fails + 1)) ;; esac
				done
			done
		done
	done < <(pairs)
	return "$fails"
}

status() {
	[ -f "$LAB_DIR/shape" ] || { echo "no lab"; return 0; }
	cat "$LAB_DIR/shape"
	. "$LAB_DIR/shape"
	local c
	for c in "$LAB_DIR"/c*; do
		echo "== cluster ${c##*/c}"
		"$c/kubectl" get nodes -o wide 2>&1 || true
		"$c/kubectl" get pods -A -o wide 2>&1 || true
	done
	if [ -f "$LAB_DIR/wan/links" ]; then
		local a b x w
		echo "== WAN links (lab.sh wan shows the relays)"
		while read -r a b x w; do
			echo "link $x of clusters $a-$b: netns $w, gateways $(wan_addr "$a" "$b" "$x" "$a") (c$a-n1) <-> $(wan_addr "$a" "$b" "$x" "$b") (c$b-n1)"
		done <"$LAB_DIR/wan/links"
	fi
}

# Sourced (for debugging a step by hand): define the functions only.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

cmd=${1:-}
shift || true
case "$cmd" in
up) up "$@" ;;
down) down ;;
status) status ;;
smoke) smoke ;;
wan) wan "$@" ;;
kubectl) c=${1:?cluster}; shift; exec "$(cdir "$c")/kubectl" "$@" ;;
exec)
	c=${1:?cluster}; i=${2:?node}; shift 2
	exec nsenter --net="/run/netns/$(ns_node "$c" "$i")" --mount="/proc/$(cat "$(ndir "$c" "$i")/containerd/containerd.pid")/ns/mnt" -- "$@"
	;;
*) die "usage: lab.sh up [--clusters N] [--nodes M] | down | status | smoke | wan [PAIR LINK FLAGS] | kubectl C ARGS | exec C N CMD" ;;
esac

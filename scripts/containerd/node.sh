#!/usr/bin/env bash
# Runs a containerd 1.6 "node" that cannot harm the host: inside its own network namespace
# and a private mount namespace (tmpfs /run; /var/lib and /var/log bound to the state dir),
# with its own root, state and socket under one state dir, and the CRI plugin's CNI
# bin/conf dirs inside it. Used by integration/runtime and scripts/demo.sh.
#
#   node.sh up DIR NETNS     start containerd (creates netns NETNS if absent, lo up)
#   node.sh down DIR         remove every pod (CNI DEL), stop containerd and everything it
#                            started, delete the netns if up created it, remove DIR
#
# Layout of DIR after `up`: containerd.toml, containerd.sock, containerd.pid,
# containerd.log, crictl.yaml, cni/bin (put patronus-cni, host-local, loopback here),
# cni/net.d (the conflist), cgroup-parent (the cgroup parent pods must use), root/,
# state/, var-lib/, var-log/.
# DIR must not be under /run or /var/lib (they are replaced inside the mount namespace).
# Environment: CRICTL (path of crictl, for `down`), SANDBOX_IMAGE.
set -euo pipefail
# alive, starttime.
# shellcheck source=../lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

log() { echo "containerd-node: $*" >&2; }
die() { log "$*"; exit 1; }

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: node.sh up DIR NETNS | node.sh down DIR"
SANDBOX_IMAGE=${SANDBOX_IMAGE:-registry.k8s.io/pause:3.10.2}

up() {
	local netns=${1:?"node.sh up DIR NETNS: NETNS missing"}
	case "$dir" in /*) ;; *) die "DIR must be absolute: $dir" ;; esac
	case "$dir/" in /run/* | /var/run/* | /var/lib/*) die "DIR must not be under /run or /var/lib: $dir" ;; esac
	mkdir -p "$dir"/{root,state,var-lib,var-log,cni/bin,cni/net.d}
	if [ -f "$dir/containerd.pid" ] && kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null; then
		die "containerd already running for $dir (pid $(cat "$dir/containerd.pid")); run node.sh down first"
	fi
	if [ ! -e "/run/netns/$netns" ]; then
		ip netns add "$netns"
		echo "$netns" >"$dir/netns-created"
	fi
	echo "$netns" >"$dir/netns"
	# Pods must use this cgroup parent (pod config linux.cgroup_parent) so that `down` can
	# remove every cgroup the node made, even after a crash.
	echo "/patronus-$netns" >"$dir/cgroup-parent"
	ip -n "$netns" link set lo up

	cat >"$dir/containerd.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
# Plugins that would touch host paths or are useless here.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$dir/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  # CAP_SYS_RESOURCE is missing here: never lower a process's OOM score below ours.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$dir/cni/bin"
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
TOML
	cat >"$dir/crictl.yaml" <<YAML
runtime-endpoint: unix://$dir/containerd.sock
image-endpoint: unix://$dir/containerd.sock
timeout: 60
YAML
	# nsenter and unshare exec (no fork), so $! is containerd's own pid. setsid detaches it
	# from the caller's terminal and process group.
	setsid nsenter --net="/run/netns/$netns" -- \
		unshare --mount --propagation private -- \
		sh -c 'mount -t tmpfs -o mode=755 tmpfs /run &&
			mount --bind "$1/var-lib" /var/lib &&
			mount --bind "$1/var-log" /var/log &&
			exec containerd --config "$1/containerd.toml"' sh "$dir" \
		>"$dir/containerd.log" 2>&1 </dev/null &
	local pid=$!
	echo "$pid" >"$dir/containerd.pid"
	# Its start time (clock ticks after boot, /proc/PID/stat field 22): with the pid it names
	# this process only, so `down` never kills another one that got the pid after a wrap.
	starttime "$pid" >"$dir/containerd.start" || true
	local i
	for i in $(seq 1 200); do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -20 "$dir/containerd.log" >&2
			die "containerd exited during start (log: $dir/containerd.log)"
		fi
		if [ -S "$dir/containerd.sock" ] && ctr --address "$dir/containerd.sock" version >/dev/null 2>&1; then
			readlink "/proc/$pid/ns/mnt" >"$dir/mntns"
			log "containerd (pid $pid) ready at $dir/containerd.sock in netns $netns"
			return 0
		fi
		sleep 0.1
	done
	die "containerd did not answer on $dir/containerd.sock within 20s (log: $dir/containerd.log)"
}

# descendants PID...: prints the given pids and all their descendants.
descendants() {
	local todo=("$@") seen=" " p c
	while [ ${#todo[@]} -gt 0 ]; do
		p=${todo[0]}
		todo=("${todo[@]:1}")
		case "$seen" in *" $p "*) continue ;; esac
		seen="$seen$p "
		echo "$p"
		for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do todo+=("$c"); done
	done
}

# ours PID: PID is still this node's containerd or one of its processes: it is alive, in the
# node's network namespace (when that still exists) and in the mount namespace recorded at
# start (or, when up died before recording it, it is the process started then: same start
# time). A pid file alone proves nothing: pids wrap, and another lab's process may have it.
ours() {
	local p=$1
	alive "$p" || return 1
	if [ -n "$netns_ino" ]; then
		[ "$(stat -L -c %i "/proc/$p/ns/net" 2>/dev/null)" = "$netns_ino" ] || return 1
	fi
	if [ -n "$mntns" ]; then
		[ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" = "$mntns" ] && return 0
	fi
	[ -n "$start" ] && [ "$p" = "$pid" ] && [ "$(starttime "$p")" = "$start" ] && return 0
	return 1
}

down() {
	[ -d "$dir" ] || return 0
	local pid="" mntns="" netns="" start="" netns_ino="" status=0
	[ -f "$dir/containerd.pid" ] && pid=$(cat "$dir/containerd.pid")
	[ -f "$dir/mntns" ] && mntns=$(cat "$dir/mntns")
	[ -f "$dir/containerd.start" ] && start=$(cat "$dir/containerd.start")
	[ -f "$dir/netns" ] && netns=$(cat "$dir/netns")
	[ -n "$netns" ] && [ -e "/run/netns/$netns" ] && netns_ino=$(stat -L -c %i "/run/netns/$netns")
	if [ -n "$pid" ] && ! ours "$pid"; then
		alive "$pid" && log "pid $pid (from $dir/containerd.pid) is not this node's containerd any more: left alone"
		pid=""
		# The pid file is stale (or was overwritten): find containerd in its namespaces.
		local p
		for p in /proc/[0-9]*; do
			p=${p#/proc/}
			[ -n "$mntns" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = containerd ] && ours "$p" && { pid=$p; break; }
		done
	fi
	if [ -n "$pid" ]; then
		# Remove the pods through the CRI so the CNI plugin gets its DEL. (Whoever runs a
		# kubelet on this containerd stops it first, else it re-creates the sandboxes.)
		local crictl=${CRICTL:-$(command -v crictl || true)}
		if [ -n "$crictl" ] && [ -S "$dir/containerd.sock" ]; then
			if timeout 60 "$crictl" --config "$dir/crictl.yaml" rmp --force --all >/dev/null 2>&1; then
				log "pods of containerd $pid removed through the CRI"
			else
				log "warning: removing pods through the CRI failed; killing them"
			fi
		fi
	fi
	# Everything this node started lives in containerd's mount namespace (containerd and its
	# shims, and whatever joined it) or below those processes (the containers). Collect them
	# before killing any; only verified roots, never a bare pid.
	local roots=() p
	[ -n "$pid" ] && roots+=("$pid")
	if [ -n "$mntns" ]; then
		for p in /proc/[0-9]*; do
			p=${p#/proc/}
			[ "$p" != "$pid" ] && ours "$p" && roots+=("$p")
		done
	fi
	if [ ${#roots[@]} -gt 0 ]; then
		# pid:starttime of each, so a process that exits meanwhile and whose pid is reused
		# is not killed in its place.
		local all=() ps
		for p in $(descendants "${roots[@]}" | sort -u); do
			ps=$(starttime "$p") && all+=("$p:$ps")
		done
		[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 50); do [ -n "$pid" ] && alive "$pid" || break; sleep 0.1; done
		for ps in "${all[@]}"; do
			[ "$(starttime "${ps%%:*}")" = "${ps#*:}" ] && kill -KILL "${ps%%:*}" 2>/dev/null || true
		done
		for ps in "${all[@]}"; do
			for _ in $(seq 1 50); do alive "${ps%%:*}" || break; sleep 0.1; done
		done
	fi
	if [ -f "$dir/cgroup-parent" ]; then
		local cg
		cg=$(cat "$dir/cgroup-parent")
		# Deepest first; a cgroup whose processes are gone can be removed with rmdir. A
		# killed process may keep its cgroup busy until it is reaped: retry for a while.
		local left
		for _ in $(seq 1 100); do
			find /sys/fs/cgroup/*/"${cg#/}" -depth -type d -exec rmdir {} + 2>/dev/null || true
			left=$(ls -d /sys/fs/cgroup/*/"${cg#/}" 2>/dev/null || true)
			[ -z "$left" ] && break
			sleep 0.1
		done
		if [ -n "$left" ]; then
			log "ERROR: cgroups left behind: $left"
			status=1
		fi
	fi
	if [ -f "$dir/netns-created" ]; then
		netns=$(cat "$dir/netns-created")
		ip netns del "$netns" 2>/dev/null || true
		if [ -e "/run/netns/$netns" ]; then log "ERROR: netns $netns could not be removed"; status=1; fi
	fi
	rm -rf "$dir"
	return $status
}

case "$cmd" in
up) up "${3:-}" ;;
down) down ;;
*) die "unknown command $cmd (up|down)" ;;
esac

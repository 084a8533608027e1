# shellcheck shell=bash
# Functions shared by the lab, build and test scripts (scripts/lab/, scripts/containerd/,
# scripts/build-k8s.sh, scripts/mcs-conformance.sh), so each exists once. Sourced, never run;
# it defines functions only (no variables, no `set`, no output), so a script's own options
# and environment stay as they were. The demo's scenario functions are scripts/demo/lib.sh.
#
# Processes (a pid alone names no process: pids wrap, at 32768 here):
#   alive PID          the process exists and is not a zombie
#   starttime PID      its start time, field 22 of /proc/PID/stat (clock ticks after boot)
#
# Builds:
#   progress_ticker SECS START CMD...   in the background, every SECS seconds:
#                                       CMD... "<seconds since START>s"; $! is its pid

# alive PID: the process exists and is not a zombie (kill -0 succeeds on zombies, which may
# wait a while for their new parent to reap them).
alive() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[ "${stat:0:1}" != Z ]
}

# starttime PID: field 22 of /proc/PID/stat (after the command name, which may hold spaces
# and parentheses); with the pid it names one process, even after the pid space wraps.
starttime() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	# shellcheck disable=SC2086
	set -- $stat
	echo "${20}"
}

# progress_ticker SECS START CMD...: a background job that runs CMD with one more argument,
# the seconds since START (a `date +%s`) and "s", every SECS seconds until it is killed
# (SIGTERM); the caller takes its pid from $! and kills it when the build is over. E.g.
#   progress_ticker 30 "$start" log "still building..."; ticker=$!
# Progress for a newcomer: the Go compiler is silent for minutes otherwise. The ticker holds
# neither a build lock on fd 9 nor stdout (a caller's $(...) waits for its EOF): it writes to
# stderr. It takes its sleep with it when killed.
progress_ticker() {
	local secs=$1 start=$2
	shift 2
	(
		exec 9>&- >&2
		trap 'kill $s 2>/dev/null; exit 0' TERM
		while :; do
			sleep "$secs" &
			s=$!
			wait $s
			"$@" "$(( $(date +%s) - start ))s"
		done
	) &
}

# shellcheck shell=bash
# Functions shared by the lab, build and test scripts (scripts/lab/, scripts/containerd/,
# scripts/build-k8s.sh, scripts/mcs-conformance.sh), so each exists once. Sourced, never run;
# it defines functions only (no variables, no `set`, no output), so a script's own options
# and environment stay as they were. The demo's scenario functions are scripts/demo/lib.sh.
#
# Processes (a pid alone names no process: pids wrap, at 32768 here):
#   alive PID          the process exists and is not a zombie
#   starttime PID      its start time, field 22 of /proc/PID/stat (clock ticks after boot)

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

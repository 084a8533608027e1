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
# Waiting:
#   wait_until SECS INTERVAL CMD...     retry CMD (quietly) every INTERVAL s until it
#                                       succeeds (0) or SECS s have passed (1)
#
# Builds:
#   progress_ticker SECS START CMD...   in the background, every SECS seconds:
#                                       CMD... "<seconds since START>s"; $! is its pid
#
# Ginkgo junit reports (the conformance scripts' result tables):
#   junit_testcases FILE...             the <testcase ...> start tags, one a line
#   junit_attr NAME                     attribute NAME of the tag on stdin, as written
#   junit_secs                          its time attribute in whole seconds
#   xml_unescape                        decodes &#39; &apos; &#34; &quot; &amp; (stdin)
#   junit_result STATUS                 "pass", or "FAIL (STATUS)" ("did not run" if empty)
#   junit_table_head COLUMN             the header of a | COLUMN | Result | Time | table
#   junit_row NAME RESULT SECS          one row of it (SECS empty: "?")

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

# wait_until SECS INTERVAL CMD...: runs CMD, its output discarded, until it succeeds (returns
# 0) or SECS seconds have passed since the first try (returns 1), sleeping INTERVAL seconds
# (a fraction is fine) between tries. The caller says what timed out.
wait_until() {
	local secs=$1 interval=$2 deadline
	shift 2
	deadline=$(( $(date +%s) + secs ))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep "$interval"
	done
	return 1
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

# junit_testcases FILE...: the <testcase ...> start tags of Ginkgo junit reports, one a line
# (a report's attributes are all in its start tag: name, classname, status, time).
junit_testcases() { grep -ho '<testcase [^>]*>' "$@"; }

# junit_attr NAME: the value of attribute NAME of the testcase tag on stdin, entities as
# written (xml_unescape decodes them).
junit_attr() { sed -n "s/.* $1=\"\([^\"]*\)\".*/\1/p"; }

# junit_secs: the time attribute of the testcase tag on stdin in whole seconds, truncated;
# nothing when there is none. Ginkgo writes seconds as a float, with an exponent when tiny
# ("4.3e-05": 0).
junit_secs() { junit_attr time | awk 'NF { printf "%d\n", $1 }'; }

# xml_unescape: stdin with the entities Ginkgo's (Go's) XML writer puts into spec names for
# quotes and ampersands decoded, &amp; last. &lt; and &gt; stay: in a Markdown table a raw
# <word> reads as an HTML tag.
xml_unescape() { sed "s/&#39;/'/g; s/&apos;/'/g; s/&#34;/\"/g; s/&quot;/\"/g; s/&amp;/\\&/g"; }

# junit_result STATUS: a table's result for a testcase status: "pass" for passed, else
# "FAIL (STATUS)", "FAIL (did not run)" when there is no status (no testcase ran the spec).
junit_result() {
	if [ "$1" = passed ]; then echo pass; else echo "FAIL (${1:-did not run})"; fi
}

# junit_table_head COLUMN: the first two lines of a result table: | COLUMN | Result | Time |.
junit_table_head() {
	echo "| $1 | Result | Time |"
	echo "|---|---|---|"
}

# junit_row NAME RESULT SECS: one row of that table (no SECS: "?").
junit_row() { printf '| %s | %s | %ss |\n' "$1" "$2" "${3:-?}"; }

# shellcheck shell=bash
# `patronus status` and `patronus pods` inside the agent pod of node c1-n1 (the DaemonSet's
# daemon container: the node's database and agent socket). Sourced by scripts/demo.sh with
# scripts/demo/lib.sh.
scenario "patronus status and patronus pods on node c1-n1 (in its Patronus agent pod)"
pod=$(agent_pod 1 1)
[ -n "$pod" ] || fail "no Patronus agent pod on c1-n1"
note "agent pod: kube-system/$pod"
if agent_has 1 1 pods; then
	show agent 1 1 pods || fail "patronus pods failed"
	ok "patronus pods: the node's pods as the agent knows them"
else
	skipped "patronus pods is not in this build"
fi
rc=0
show agent 1 1 status || rc=$?
if [ $rc = 0 ]; then
	ok "patronus status: every check passed"
else
	fail "patronus status exited $rc (a check above failed)"
fi

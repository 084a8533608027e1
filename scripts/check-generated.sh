#!/usr/bin/env bash
# Checks that the committed bpf2go output (bpf/policy_bpfel.go and .o) matches
# bpf/src/policy.c: regenerates into a temporary copy of bpf/ and compares. Needs clang,
# llvm-strip and libbpf headers (scripts/deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The copy lives inside the module (bpf2go runs through `go tool` of this module), under
# a name go ignores for packages (leading underscore).
work=$(mktemp -d "$PWD/_gencheck.XXXXXX")
trap 'rm -rf "$tmp" "$work"' EXIT
cp -r bpf/. "$work/"
(cd "$work" && go generate ./... >"$tmp/log" 2>&1) || { cat "$tmp/log" >&2; exit 1; }
status=0
for f in policy_bpfel.go policy_bpfel.o; do
	if ! cmp -s "bpf/$f" "$work/$f"; then
		echo "check-generated: bpf/$f is stale: run 'go generate ./bpf/' and commit the result" >&2
		status=1
	fi
done
exit $status

#!/usr/bin/env bash
# Installs the Debian packages the tests, benchmarks and demo use. Idempotent: packages
# already present are not reinstalled, so a warm machine spends no time here.
set -euo pipefail

PKGS=(clang llvm libbpf-dev bpftool nftables iproute2 iputils-ping iperf3 containerd runc
      openssl tcpdump procps psmisc kmod ca-certificates jq curl)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/patronus-apt.log 2>&1; then
	apt-get update >>/tmp/patronus-apt.log 2>&1
	apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/patronus-apt.log 2>&1 ||
		{ tail -30 /tmp/patronus-apt.log >&2; exit 1; }
fi

#!/usr/bin/env bash
# Builds crictl (sigs.k8s.io/cri-tools) from the Go module proxy into a cache dir keyed by
# version and prints that dir. Skips the build when the binary is already there.
set -euo pipefail
CRICTL_VERSION=${CRICTL_VERSION:-v1.37.0}
CACHE=${PATRONUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patronus}
OUT=$CACHE/tools/crictl/$CRICTL_VERSION
if [ ! -x "$OUT/crictl" ]; then
	echo "build-crictl: building crictl $CRICTL_VERSION into $OUT (first time: a minute or two)" >&2
	mkdir -p "$OUT"
	tmp=$(mktemp -d "$OUT/.build.XXXX")
	trap 'rm -rf "$tmp"' EXIT
	GOBIN=$tmp CGO_ENABLED=0 GOFLAGS=-trimpath go install \
		-ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
		"sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" >&2
	mv -f "$tmp/crictl" "$OUT/crictl"
fi
echo "$OUT"

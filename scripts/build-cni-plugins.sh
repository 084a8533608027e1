#!/usr/bin/env bash
# Builds the reference CNI plugins (bridge, host-local, portmap, bandwidth) and cnitool from
# the Go module proxy into a cache dir keyed by version; prints that dir. Used by the chaining
# test and the benchmark (the reference bridge plugin is the baseline).
set -euo pipefail
PLUGINS_VERSION=${PLUGINS_VERSION:-v1.10.0}
CNITOOL_VERSION=${CNITOOL_VERSION:-v1.3.1}
CACHE=${PATRONUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patronus}
OUT=$CACHE/cni-plugins/$PLUGINS_VERSION
mkdir -p "$OUT"
want=(bridge host-local portmap bandwidth loopback cnitool)
ok=1
for p in "${want[@]}"; do [ -x "$OUT/$p" ] || ok=0; done
if [ $ok = 0 ]; then
	echo "build-cni-plugins: building reference plugins $PLUGINS_VERSION into $OUT" >&2
	export GOBIN=$OUT CGO_ENABLED=0
	go install "github.com/containernetworking/plugins/plugins/main/bridge@$PLUGINS_VERSION" \
		"github.com/containernetworking/plugins/plugins/ipam/host-local@$PLUGINS_VERSION" \
		"github.com/containernetworking/plugins/plugins/meta/portmap@$PLUGINS_VERSION" \
		"github.com/containernetworking/plugins/plugins/meta/bandwidth@$PLUGINS_VERSION" \
		"github.com/containernetworking/plugins/plugins/main/loopback@$PLUGINS_VERSION" >&2
	go install "github.com/containernetworking/cni/cnitool@$CNITOOL_VERSION" >&2
fi
echo "$OUT"

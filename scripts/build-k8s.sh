#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kubectl (and, with --lab, the rest of a node's components)
# from the Go module proxy in a separate build module, and caches them by version and by a
# stamp of the build module's go.sum. Prints the directory holding the binaries on stdout.
#
# Why a separate module: k8s.io/kubernetes replaces its staging modules with local paths,
# so `go install k8s.io/kubernetes/cmd/...@v` fails; a module that pins every staging module
# to its published version builds fine (see docs/CONTRACT.md and ../shared/K8S.md).
set -euo pipefail
# progress_ticker.
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.0}
STAGING=${K8S_VERSION/v1./v0.}
CACHE=${PATRONUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patronus}
OUT=$CACHE/k8s/$K8S_VERSION
MOD=$CACHE/k8s/build-$K8S_VERSION

TARGETS=(go.etcd.io/etcd/server/v3 k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl)
NAMES=(etcd kube-apiserver kubectl)

log() { echo "build-k8s: $*" >&2; }

mkdir -p "$OUT" "$MOD"
# One build at a time: `go test ./...` runs packages in parallel, and each test that needs
# a control plane may call this script; the others wait here and then find the cache.
exec 9>"$CACHE/k8s/.lock-$K8S_VERSION"
if ! flock -n 9; then
	log "another build of Kubernetes $K8S_VERSION is running; waiting for it"
	flock 9
fi
if [ ! -f "$MOD/go.mod" ]; then
	log "preparing build module for Kubernetes $K8S_VERSION in $MOD"
	(
		cd "$MOD"
		cat >go.mod <<GOMOD
module patronus.local/k8sbuild

go 1.26
GOMOD
		gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | grep '"GoMod"' | cut -d'"' -f4)
		{
			echo "replace ("
			sed -n '/^replace (/,/^)/p' "$gomod" | awk -v v="$STAGING" '/=>/{printf "\t%s => %s %s\n",$1,$1,v}'
			echo ")"
		} >>go.mod
		cat >tools.go <<'GO'
//go:build tools

package tools
GO
		go get "k8s.io/kubernetes@$K8S_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
		for t in "${TARGETS[@]}"; do go get -tool "$t" >&2; done
	)
fi

stamp=$(sha256sum "$MOD/go.sum" | cut -d' ' -f1)
ok=1
for n in "${NAMES[@]}"; do [ -x "$OUT/$n" ] || ok=0; done
if [ $ok = 1 ] && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "$OUT"
	exit 0
fi

log "building ${NAMES[*]} $K8S_VERSION (first time: 6 to 15 minutes on 2 cores; cached afterwards in $OUT)"
start=$(date +%s)
(
	cd "$MOD"
	ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#v1.}"
	ld=${ld%.*}
	tmp=$(mktemp -d "$OUT/.build.XXXX")
	# Progress for a newcomer: the Go compiler is silent for minutes otherwise.
	progress_ticker 30 "$start" log "still building..."
	ticker=$!
	trap 'kill $ticker 2>/dev/null' EXIT
	CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$tmp/" "${TARGETS[@]}" >&2
	mv "$tmp/server" "$tmp/etcd"
	for n in "${NAMES[@]}"; do mv -f "$tmp/$n" "$OUT/$n"; done
	rmdir "$tmp"
)
echo "$stamp" >"$OUT/.stamp"
log "built in $(( $(date +%s) - start ))s"
echo "$OUT"

#!/usr/bin/env bash
# Builds and caches every binary the lab needs besides etcd, kube-apiserver and kubectl
# (scripts/build-k8s.sh builds those): kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, agnhost, e2e.test (Kubernetes $K8S_VERSION) and CoreDNS ($COREDNS_VERSION).
#
# Same technique as scripts/build-k8s.sh: a separate Go module (not the project's) that pins
# every Kubernetes staging module to its published version. It is a different module from
# build-k8s.sh's so that adding the lab's tools does not change that module's go.sum stamp
# (which would rebuild the control plane every test run uses); both share Go's build cache.
#
# Usage: scripts/lab/build.sh [COMPONENT...]   (default: all)
# Prints the directory holding the binaries on stdout. Progress goes to stderr.
# Builds run under `nice -n 19` with one compile job at a time (LAB_BUILD_JOBS to change it)
# so that a shared machine stays responsive.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

K8S_VERSION=${K8S_VERSION:-v1.37.2}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
STAGING=${K8S_VERSION/v1./v0.}
JOBS=${LAB_BUILD_JOBS:-1}
CACHE=${PATRONUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patronus}
OUT=$CACHE/lab/bin-$K8S_VERSION
MOD=$CACHE/lab/build-$K8S_VERSION
DNSMOD=$CACHE/lab/build-coredns-$COREDNS_VERSION

log() { echo "lab-build: $*" >&2; }

ALL=(kubelet kube-proxy kube-scheduler kube-controller-manager coredns agnhost e2e.test)
# What a bring-up needs (e2e.test is built by scripts/lab/conformance.sh when first needed).
[ "${1:-}" != --lab-up ] || set -- kubelet kube-proxy kube-scheduler kube-controller-manager coredns agnhost
want=("$@")
[ ${#want[@]} -gt 0 ] || want=("${ALL[@]}")

mkdir -p "$OUT" "$MOD" "$DNSMOD"

# lock NAME: one build of NAME at a time (a lab bring-up and `make conformance` may run this
# concurrently; the second waits, then finds the cache). Per component, so a bring-up is not
# held up by an e2e.test build it does not need.
lock() {
	exec 9>"$CACHE/lab/.lock-$1"
	if ! flock -n 9; then
		log "another build of $1 is running; waiting for it"
		flock 9
	fi
}

ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
gobuild() { nice -n 19 env GOFLAGS=-p=$JOBS CGO_ENABLED=0 go "$@"; }

prepare_k8s() {
	[ -f "$MOD/.prepared" ] && return 0
	log "preparing build module for Kubernetes $K8S_VERSION in $MOD"
	(
		cd "$MOD"
		# Start from build-k8s.sh's module (same requirements, etcd included): Go then
		# selects the same version of every shared dependency, so the packages already
		# compiled for kube-apiserver and kubectl come from Go's build cache.
		k8smod=$CACHE/k8s/build-$K8S_VERSION
		[ -f "$k8smod/go.sum" ] || "$ROOT/scripts/build-k8s.sh" >/dev/null
		sed -e 's|^module .*|module patronus.local/labbuild|' -e '/^tool/,$d' "$k8smod/go.mod" >go.mod
		cp "$k8smod/go.sum" go.sum
		for t in kube-controller-manager kube-scheduler kubelet kube-proxy; do
			go get -tool "k8s.io/kubernetes/cmd/$t" >&2
		done
		go get -tool k8s.io/kubernetes/test/images/agnhost >&2
		# e2e.test is a test binary: its test-only dependencies must be in the module graph.
		go get -t k8s.io/kubernetes/test/e2e >&2
	)
	touch "$MOD/.prepared"
}

# Stock CoreDNS: its kubernetes plugin has had the MCS `multicluster` option (answers
# clusterset.local from ServiceImports) since 1.12.2, so no external plugin is compiled in
# (github.com/coredns/multicluster, the older external plugin, is not on the module proxy).
# integration/mcs/dns_test.go and integration/agent/mcs_test.go run this binary
# (PATRONUS_COREDNS, else they call `scripts/lab/build.sh coredns`).
prepare_coredns() {
	[ -f "$DNSMOD/.prepared" ] && return 0
	log "preparing build module for CoreDNS $COREDNS_VERSION in $DNSMOD"
	(
		cd "$DNSMOD"
		printf 'module patronus.local/corednsbuild\n\ngo 1.26\n' >go.mod
		go get "github.com/coredns/coredns@$COREDNS_VERSION" >&2
		go get -tool github.com/coredns/coredns >&2
	)
	touch "$DNSMOD/.prepared"
}

# built NAME STAMP: the cached binary exists and was built from this go.sum.
built() { [ -x "$OUT/$1" ] && [ "$(cat "$OUT/.$1.stamp" 2>/dev/null)" = "$2" ]; }

build_one() {
	local name=$1 mod=$MOD stamp start
	case "$name" in
	coredns) lock "prepare-coredns-$COREDNS_VERSION"; prepare_coredns; mod=$DNSMOD ;;
	*) lock "prepare-$K8S_VERSION"; prepare_k8s ;;
	esac
	lock "$name-$K8S_VERSION"
	stamp=$(sha256sum "$mod/go.sum" | cut -d' ' -f1)
	if built "$name" "$stamp"; then
		log "$name: cached"
		return 0
	fi
	start=$(date +%s)
	log "$name: building (first time: several minutes on 2 cores)"
	( while sleep 60; do log "$name: still building... $(( $(date +%s) - start ))s"; done ) &
	local ticker=$!
	local tmp
	tmp=$(mktemp -d "$OUT/.build.XXXX")
	if ! (
		cd "$mod"
		case "$name" in
		coredns) gobuild build -trimpath -ldflags "-s -w" -o "$tmp/coredns" github.com/coredns/coredns ;;
		agnhost) gobuild build -trimpath -ldflags "-s -w" -o "$tmp/agnhost" k8s.io/kubernetes/test/images/agnhost ;;
		e2e.test) gobuild test -c -trimpath -ldflags "$ld" -o "$tmp/e2e.test" k8s.io/kubernetes/test/e2e ;;
		*) gobuild build -trimpath -ldflags "$ld" -o "$tmp/$name" "k8s.io/kubernetes/cmd/$name" ;;
		esac
	) >&2; then
		kill "$ticker" 2>/dev/null || true
		rm -rf "$tmp"
		log "$name: build FAILED"
		return 1
	fi
	kill "$ticker" 2>/dev/null || true
	mv -f "$tmp/$name" "$OUT/$name"
	rmdir "$tmp"
	echo "$stamp" >"$OUT/.$name.stamp"
	log "$name: built in $(( $(date +%s) - start ))s"
}

for n in "${want[@]}"; do build_one "$n"; done
echo "$OUT"

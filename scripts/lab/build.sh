#!/usr/bin/env bash
# Builds and caches every binary the lab needs besides etcd, kube-apiserver and kubectl
# (scripts/build-k8s.sh builds those): kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, agnhost, e2e-netpol.test (Kubernetes $K8S_VERSION) and CoreDNS ($COREDNS_VERSION).
#
# Same technique as scripts/build-k8s.sh: a separate Go module (not the project's) that pins
# every Kubernetes staging module to its published version. It is a different module from
# build-k8s.sh's so that adding the lab's tools does not change that module's go.sum stamp
# (which would rebuild the control plane every test run uses). Both resolve the same version
# of every shared module and build with the same flags (-trimpath, CGO_ENABLED=0), so the
# packages kube-apiserver and kubectl compiled come from Go's build cache here.
#
# e2e-netpol.test is upstream's e2e suite with only the NetworkPolicy specs linked in
# (scripts/lab/e2enetpol/e2enetpol_test.go, compiled in this module with `go test -c`): the
# conformance scripts select nothing else, and the whole e2e.test took a fresh machine about
# 19 minutes of compiling. It is cached by the module's go.sum and the wrapper's content.
#
# Usage: scripts/lab/build.sh [COMPONENT...]   (default: all)
#        scripts/lab/build.sh --lab-up          what a lab bring-up needs
# Prints the directory holding the binaries on stdout. Progress goes to stderr.
# The Kubernetes commands wanted and not cached are compiled in one `go build` (their shared
# packages once, links overlapping compiles). Builds run under `nice -n 19` (LAB_BUILD_NICE to
# change it) with Go's default parallelism (one compile job per core); LAB_BUILD_JOBS=N
# limits it (go build -p N).
# Cache: $PATRONUS_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/patronus)/lab/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# progress_ticker.
# shellcheck source=../lib/common.sh
. "$ROOT/scripts/lib/common.sh"

K8S_VERSION=${K8S_VERSION:-v1.37.2}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
CACHE=${PATRONUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patronus}
OUT=$CACHE/lab/bin-$K8S_VERSION
MOD=$CACHE/lab/build-$K8S_VERSION
DNSMOD=$CACHE/lab/build-coredns-$COREDNS_VERSION
WRAPPER=$ROOT/scripts/lab/e2enetpol/e2enetpol_test.go

log() { echo "lab-build: $*" >&2; }

CMDS=(kubelet kube-proxy kube-scheduler kube-controller-manager)
ALL=("${CMDS[@]}" coredns agnhost e2e-netpol.test)
# What a bring-up needs (e2e-netpol.test is built by the conformance scripts when needed).
[ "${1:-}" != --lab-up ] || set -- "${CMDS[@]}" coredns agnhost
want=("$@")
[ ${#want[@]} -gt 0 ] || want=("${ALL[@]}")
for n in "${want[@]}"; do
	case " ${ALL[*]} " in *" $n "*) ;; *) log "unknown component $n (known: ${ALL[*]})"; exit 2 ;; esac
done

mkdir -p "$OUT" "$MOD" "$DNSMOD"

# lock NAME: one build of NAME at a time (a lab bring-up and `make conformance` may run this
# concurrently; the second waits, then finds the cache). Per component group, so a bring-up
# is not held up by an e2e-netpol.test build it does not need. Taking a lock releases the
# previous one (same descriptor).
lock() {
	exec 9>"$CACHE/lab/.lock-$1"
	if ! flock -n 9; then
		log "another build of $1 is running; waiting for it"
		flock 9
	fi
}

ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
goflags=$(go env GOFLAGS)
[ -z "${LAB_BUILD_JOBS:-}" ] || goflags="$goflags -p=$LAB_BUILD_JOBS"
gobuild() { nice -n "${LAB_BUILD_NICE:-19}" env GOFLAGS="$goflags" CGO_ENABLED=0 go "$@"; }

prepare_k8s() {
	if [ ! -f "$MOD/.prepared" ]; then
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
			tools=()
			for t in "${CMDS[@]}"; do tools+=("k8s.io/kubernetes/cmd/$t@$K8S_VERSION"); done
			go get -tool "${tools[@]}" "k8s.io/kubernetes/test/images/agnhost@$K8S_VERSION" >&2
		)
		touch "$MOD/.prepared"
	fi
	# The e2e wrapper package: copied in (when new or changed) and its imports resolved.
	if ! cmp -s "$WRAPPER" "$MOD/e2enetpol/e2enetpol_test.go"; then
		mkdir -p "$MOD/e2enetpol"
		cp "$WRAPPER" "$MOD/e2enetpol/e2enetpol_test.go"
		(cd "$MOD" && go get -t ./e2enetpol) >&2
	fi
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

# stamp NAME: what the cached NAME must have been built from.
stamp() {
	case "$1" in
	coredns) sha256sum "$DNSMOD/go.sum" | cut -d' ' -f1 ;;
	e2e-netpol.test) cat "$MOD/go.sum" "$WRAPPER" | sha256sum | cut -d' ' -f1 ;;
	*) sha256sum "$MOD/go.sum" | cut -d' ' -f1 ;;
	esac
}
# built NAME: the cached binary exists and was built from what stamp NAME says.
built() { [ -x "$OUT/$1" ] && [ "$(cat "$OUT/.$1.stamp" 2>/dev/null)" = "$(stamp "$1")" ]; }

# build LABEL NAME...: builds NAMEs (all cached first-checked by the caller) in one go command
# and moves them into $OUT with their stamps.
build() {
	local label=$1 start tmp ticker n mod=$MOD
	shift
	start=$(date +%s)
	log "$label: building $* (first time: minutes on 2 cores)"
	# A line a minute (scripts/lib/common.sh: it holds neither the lock on fd 9 nor stdout).
	progress_ticker 60 "$start" log "$label: still building..."
	ticker=$!
	tmp=$(mktemp -d "$OUT/.build.XXXX")
	[ "$1" != coredns ] || mod=$DNSMOD
	local pkgs=()
	for n in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$n"); done
	if ! (
		cd "$mod"
		case "$1" in
		coredns) gobuild build -trimpath -ldflags "-s -w" -o "$tmp/coredns" github.com/coredns/coredns ;;
		agnhost) gobuild build -trimpath -ldflags "-s -w" -o "$tmp/agnhost" k8s.io/kubernetes/test/images/agnhost ;;
		e2e-netpol.test) gobuild test -c -trimpath -ldflags "$ld" -o "$tmp/e2e-netpol.test" ./e2enetpol ;;
		*) gobuild build -trimpath -ldflags "$ld" -o "$tmp/" "${pkgs[@]}" ;;
		esac
	) >&2; then
		kill "$ticker" 2>/dev/null || true
		rm -rf "$tmp"
		log "$label: build FAILED"
		return 1
	fi
	kill "$ticker" 2>/dev/null || true
	for n in "$@"; do
		mv -f "$tmp/$n" "$OUT/$n"
		stamp "$n" >"$OUT/.$n.stamp"
	done
	rmdir "$tmp"
	log "$label: built in $(( $(date +%s) - start ))s"
}

# The Kubernetes commands first, in one go build.
cmds=()
others=()
for n in "${want[@]}"; do
	case " ${CMDS[*]} " in *" $n "*) cmds+=("$n") ;; *) others+=("$n") ;; esac
done
if [ ${#cmds[@]} -gt 0 ]; then
	lock "prepare-$K8S_VERSION"
	prepare_k8s
	lock "cmds-$K8S_VERSION"
	todo=()
	for n in "${cmds[@]}"; do
		if built "$n"; then log "$n: cached"; else todo+=("$n"); fi
	done
	[ ${#todo[@]} = 0 ] || build "kubernetes $K8S_VERSION" "${todo[@]}"
fi
for n in ${others[@]+"${others[@]}"}; do
	case "$n" in
	coredns) lock "prepare-coredns-$COREDNS_VERSION"; prepare_coredns ;;
	*) lock "prepare-$K8S_VERSION"; prepare_k8s ;;
	esac
	lock "$n-$K8S_VERSION"
	if built "$n"; then log "$n: cached"; else build "$n" "$n"; fi
done
echo "$OUT"

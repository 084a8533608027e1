#!/usr/bin/env bash
# The Multi-Cluster Services API's own conformance suite (sigs.k8s.io/mcs-api, directory
# conformance/, unmodified; by default its specs labelled Required) against two lab clusters
# with Patronus installed from manifests/ (issues 9 and 10).
#
#   scripts/mcs-conformance.sh
#
# Steps:
# - Source: $MCS_API_SRC, a checkout of github.com/kubernetes-sigs/mcs-api. The suite is a
#   nested Go module (conformance/go.mod, `replace sigs.k8s.io/mcs-api => ..`) that the Go
#   module proxy does not serve, so it cannot come from there; without MCS_API_SRC the source
#   is extracted from the git mirror $MCS_API_MIRROR (default
#   /work/.mirror/kubernetes-sigs+mcs-api/repo) when that exists. Its dependencies come from
#   the Go module proxy.
# - Build: `go test -c` in conformance/, cached per commit under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/patronus/mcs-conformance/<commit>/conformance.test.
# - Images: the suite's pods use alpine/socat:1.7.4.4 (the exported service: socat TCP and
#   UDP listeners on port 42 answering "pod ip <ip>") and nicolaka/netshoot:v0.15 (the
#   request pod: sh, `nc -v -w 2 -4`). No registry can be reached, so stand-ins with the same
#   references are built here and imported into every node: Debian's dash as sh, busybox
#   (grep, awk, tr, sleep, nslookup), Debian's socat 1.7.4.4 (the same socat version) and
#   netcat-openbsd, with their libraries. The pod specs are the suite's, untouched; before
#   the suite a pod of each image is started the suite's way and the request pod's nc must
#   reach socat (else the "not exported -> inaccessible" spec could pass on a broken exec).
# - Lab: reuses a lab already up in $LAB_DIR if it has 2 clusters (left running), else brings
#   up 2 clusters x $LAB_NODES nodes (default 1) and removes it at exit (trap), also on failure.
# - The suite runs in a network namespace of its own ($LAB_PREFIX-mcsr) with a leg on each
#   cluster's underlay (10.77.C.250), so it reaches both API servers; a kubeconfig with one
#   context per cluster (lab-c1, lab-c2, the clusters' ids) is passed with --contexts. The
#   first context is the one the suite deploys and exports its service in.
# - Results: $MCS_OUT (default /var/tmp/patronus-mcs-conformance): suite.log, junit.xml,
#   report.html and report.yaml (the suite's own report), results.md; results.md replaces
#   the "Multi-Cluster Services API conformance" section of $MCS_CONFORMANCE_OUT (default
#   CONFORMANCE.md; empty: not written).
#
# Environment: MCS_API_SRC, MCS_API_MIRROR, LAB_PREFIX (default pmcs), LAB_DIR (default
# /var/tmp/patronus-lab-mcs), LAB_NODES (default 1), MCS_LABEL_FILTER (ginkgo label filter,
# default Required), MCS_TIMEOUT (default 30m), MCS_KEEP_LAB=1 (leave a lab this script
# brought up), MCS_OUT, MCS_CONFORMANCE_OUT.
# Exit status non-zero if the lab does not come up, the suite cannot run, or a spec fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# wait_until; junit_testcases, junit_attr, junit_secs, xml_unescape, junit_result,
# junit_table_head, junit_row.
# shellcheck source=lib/common.sh
. "$ROOT/scripts/lib/common.sh"
export LAB_PREFIX=${LAB_PREFIX:-pmcs}
export LAB_DIR=${LAB_DIR:-/var/tmp/patronus-lab-mcs}
MIRROR=${MCS_API_MIRROR:-/work/.mirror/kubernetes-sigs+mcs-api/repo}
CACHE=${PATRONUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patronus}
OUT=${MCS_OUT:-/var/tmp/patronus-mcs-conformance}
DOC=${MCS_CONFORMANCE_OUT-CONFORMANCE.md}
FILTER=${MCS_LABEL_FILTER:-Required}
TIMEOUT=${MCS_TIMEOUT:-30m}
RUNNER=$LAB_PREFIX-mcsr
SOCAT_REF=docker.io/alpine/socat:1.7.4.4
NETSHOOT_REF=docker.io/nicolaka/netshoot:v0.15

log() { echo "mcs-conformance: $(date +%H:%M:%S) $*" >&2; }
die() {
	log "FAIL: $*"
	exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (the lab)"
t_all=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT"
work=$(mktemp -d)
own_lab=0

cleanup() {
	local rc=$?
	ip netns del "$RUNNER" 2>/dev/null || true
	for c in 1 2; do ip -n "$LAB_PREFIX-c$c-ul" link del mcsr 2>/dev/null || true; done
	if [ $own_lab = 1 ] && [ "${MCS_KEEP_LAB:-0}" != 1 ]; then
		log "removing the lab ($LAB_PREFIX, $LAB_DIR)"
		./scripts/lab/lab.sh down >"$OUT/lab-down.log" 2>&1 || log "WARNING: lab.sh down failed (see $OUT/lab-down.log)"
	fi
	rm -rf "$work"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the suite's source and its commit
src=${MCS_API_SRC:-}
if [ -z "$src" ]; then
	if ! git --git-dir="$MIRROR" rev-parse --verify -q HEAD >/dev/null 2>&1; then
		die "no source of the MCS API conformance suite: set MCS_API_SRC to a checkout of
  https://github.com/kubernetes-sigs/mcs-api (e.g. git clone it on a machine with access to
  GitHub and copy it here). The Go module proxy cannot provide it: conformance/ is a nested
  module it does not serve. (No git mirror at $MIRROR either.)"
	fi
	commit=$(git --git-dir="$MIRROR" rev-parse HEAD)
	src=$work/mcs-api
	mkdir -p "$src"
	git --git-dir="$MIRROR" archive HEAD | tar -x -C "$src"
	origin="git mirror $MIRROR"
else
	[ -f "$src/conformance/go.mod" ] || die "MCS_API_SRC=$src has no conformance/go.mod (want a checkout of kubernetes-sigs/mcs-api)"
	# The checkout's commit when src is the top of a git work tree (not a directory inside
	# some other repository), else a hash of the suite's and the API's sources.
	top=$(git -C "$src" rev-parse --show-toplevel 2>/dev/null || true)
	if [ -n "$top" ] && [ "$top" -ef "$src" ]; then
		commit=$(git -C "$src" rev-parse HEAD)
	else
		commit=src-$(cd "$src" && find conformance pkg -type f -name '*.go' -o -name 'go.*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
	fi
	origin="MCS_API_SRC=$src"
fi
log "suite: sigs.k8s.io/mcs-api conformance at $commit ($origin)"

# --- the test binary, cached per commit
bin_dir=$CACHE/mcs-conformance/$commit
BIN=$bin_dir/conformance.test
t0=$(date +%s)
if [ ! -x "$BIN" ]; then
	log "building the suite (go test -c; its dependencies from the Go module proxy; a few minutes the first time)"
	mkdir -p "$bin_dir"
	(cd "$src/conformance" && GOWORK=off GOFLAGS=-mod=mod nice -n 19 go test -c -o "$BIN.tmp.$$" .) >"$OUT/build.log" 2>&1 ||
		{ tail -20 "$OUT/build.log" >&2; die "go test -c failed (see $OUT/build.log)"; }
	mv -f "$BIN.tmp.$$" "$BIN"
fi
t_build=$(( $(date +%s) - t0 ))

# --- stand-in images for the suite's two image references
debs=$CACHE/debs
mkdir -p "$debs" "$CACHE/mcs-conformance/images"
deb() {
	local d
	d=$(ls "$debs/$1"_*.deb 2>/dev/null | head -1 || true)
	if [ -z "$d" ]; then
		mkdir -p "$work/dl-$1"
		if ! (cd "$work/dl-$1" && apt-get download "$1" >/dev/null 2>&1); then
			apt-get update >/dev/null 2>&1
			(cd "$work/dl-$1" && apt-get download "$1" >/dev/null 2>&1) || die "apt-get download $1 failed"
		fi
		d=$(ls "$work/dl-$1/$1"_*.deb | head -1)
		mv -f "$d" "$debs/"
		d=$debs/$(basename "$d")
	fi
	echo "$d"
}
# with_libs BINARY ROOTFS DEST [LIBDIR]: BINARY at ROOTFS/DEST plus every library ldd resolves
# (LIBDIR: extracted libraries, looked up first and placed at their path under LIBDIR).
with_libs() {
	local bin=$1 root=$2 dest=$3 libdir=${4:-} lib
	mkdir -p "$root/$(dirname "$dest")"
	cp -L "$bin" "$root/$dest"
	for lib in $(LD_LIBRARY_PATH=${libdir:+$libdir/usr/lib/x86_64-linux-gnu:$libdir/lib/x86_64-linux-gnu} ldd "$bin" |
		awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
		if [ -n "$libdir" ] && [ "${lib#"$libdir"}" != "$lib" ]; then
			mkdir -p "$root/$(dirname "${lib#"$libdir"}")"
			cp -L "$lib" "$root/${lib#"$libdir"}"
		else
			mkdir -p "$root/$(dirname "$lib")"
			cp -L "$lib" "$root/$lib"
		fi
	done
	if LD_LIBRARY_PATH=${libdir:+$libdir/usr/lib/x86_64-linux-gnu} ldd "$bin" | grep -q 'not found'; then die "libraries of $bin not found"; fi
}
# oci_archive NAME REF ROOTFS EXEC_JSON: an OCI image layout in a tar (one layer,
# reproducible), cached by content; prints its path. EXEC_JSON is the config's
# "Entrypoint"/"Cmd" part, as the real image has it (the suite's request pod gives only args).
oci_archive() {
	local name=$1 ref=$2 rootfs=$3 exec=$4 lay arch layer config manifest out
	lay=$work/$name-layout
	arch=$(go env GOARCH)
	mkdir -p "$lay/blobs/sha256"
	tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -C "$rootfs" -cf "$work/$name-layer.tar" .
	layer=$(sha256sum "$work/$name-layer.tar" | cut -d' ' -f1)
	printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"patronus scripts/mcs-conformance.sh (stand-in for %s)"}]}' \
		"$arch" "$exec" "$layer" "$ref" >"$work/$name-config.json"
	config=$(sha256sum "$work/$name-config.json" | cut -d' ' -f1)
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
		"$config" "$(stat -c %s "$work/$name-config.json")" "$layer" "$(stat -c %s "$work/$name-layer.tar")" >"$work/$name-manifest.json"
	manifest=$(sha256sum "$work/$name-manifest.json" | cut -d' ' -f1)
	mv "$work/$name-layer.tar" "$lay/blobs/sha256/$layer"
	mv "$work/$name-config.json" "$lay/blobs/sha256/$config"
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
		"$manifest" "$(stat -c %s "$work/$name-manifest.json")" "$arch" "$ref" "${ref##*:}" >"$lay/index.json"
	mv "$work/$name-manifest.json" "$lay/blobs/sha256/$manifest"
	echo '{"imageLayoutVersion":"1.0.0"}' >"$lay/oci-layout"
	out=$CACHE/mcs-conformance/images/$name-${manifest:0:16}.tar
	if [ ! -s "$out" ]; then
		tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$lay" -cf "$out.tmp.$$" oci-layout index.json blobs
		mv -f "$out.tmp.$$" "$out"
	fi
	echo "$out"
}
base_rootfs() {
	local r=$1 a
	mkdir -p "$r"/{bin,etc,tmp,proc,sys,dev,root,usr/bin}
	dpkg-deb -x "$(deb busybox-static)" "$work/bb-deb"
	cp "$work/bb-deb/bin/busybox" "$r/bin/busybox"
	for a in $("$r/bin/busybox" --list); do
		# nc comes from netcat-openbsd where it is needed (busybox's lacks -4 and -v); sh
		# is dash, because Debian's busybox sh runs its own applets (nc too) before PATH.
		case $a in busybox | nc | sh) ;; *) ln -sf busybox "$r/bin/$a" ;; esac
	done
	with_libs /usr/bin/dash "$r" /bin/dash
	ln -sf dash "$r/bin/sh"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
	echo 'root:x:0:' >"$r/etc/group"
	echo 'hosts: files dns' >"$r/etc/nsswitch.conf"
	chmod 1777 "$r/tmp"
}
log "stand-in images for $SOCAT_REF and $NETSHOOT_REF (Debian's socat, netcat-openbsd, busybox)"
sroot=$work/socat-root
base_rootfs "$sroot"
mkdir -p "$work/socat-x"
dpkg-deb -x "$(deb socat)" "$work/socat-x"
dpkg-deb -x "$(deb libwrap0)" "$work/socat-x"
with_libs "$work/socat-x/usr/bin/socat" "$sroot" /usr/bin/socat "$work/socat-x"
# alpine/socat: ENTRYPOINT ["socat"] (the suite's pods override it with /bin/sh -c).
socat_tar=$(oci_archive mcs-socat "$SOCAT_REF" "$sroot" '"Entrypoint":["/usr/bin/socat"]')
nroot=$work/netshoot-root
base_rootfs "$nroot"
dpkg-deb -x "$(deb netcat-openbsd)" "$work/nc-x"
with_libs "$work/nc-x/bin/nc.openbsd" "$nroot" /usr/bin/nc
# nicolaka/netshoot: no entrypoint, CMD ["zsh"]; the request pod's args (/bin/sh -ec ...)
# are its whole command line.
netshoot_tar=$(oci_archive mcs-netshoot "$NETSHOOT_REF" "$nroot" '"Cmd":["/bin/sh"]')

# --- the lab
if [ -f "$LAB_DIR/netns.list" ] && [ -f "$LAB_DIR/shape" ]; then
	# shellcheck disable=SC1091
	. "$LAB_DIR/shape"
	[ "${CLUSTERS:-0}" -ge 2 ] || die "the lab in $LAB_DIR has ${CLUSTERS:-?} cluster(s); the suite needs 2 (another LAB_DIR/LAB_PREFIX, or lab.sh down)"
	log "reusing the lab in $LAB_DIR ($LAB_PREFIX, $CLUSTERS x $NODES; left running)"
	t_up=0
else
	[ ! -e "$LAB_DIR" ] || ./scripts/lab/lab.sh down >"$OUT/lab-down-before.log" 2>&1 || true
	own_lab=1
	t0=$(date +%s)
	log "lab up: 2 clusters x ${LAB_NODES:-1} node(s), $LAB_PREFIX in $LAB_DIR (log $OUT/lab-up.log)"
	if ! LAB_CLUSTERS=2 LAB_NODES=${LAB_NODES:-1} ./scripts/lab/lab.sh up >"$OUT/lab-up.log" 2>&1; then
		tail -30 "$OUT/lab-up.log" >&2
		die "lab bring-up (see $OUT/lab-up.log)"
	fi
	t_up=$(( $(date +%s) - t0 ))
	# shellcheck disable=SC1091
	. "$LAB_DIR/shape"
fi
# shellcheck disable=SC1091
. "$LAB_DIR/bin.env"
kcs() {
	local c=$1
	shift
	"$LAB_DIR/c$c/kubectl" "$@"
}

for c in 1 2; do
	for i in $(seq 1 "$NODES"); do
		sock=$LAB_DIR/c$c/n$i/containerd/containerd.sock
		[ -S "$sock" ] || die "no containerd socket $sock"
		for t in "$socat_tar" "$netshoot_tar"; do
			ctr --address "$sock" -n k8s.io images import "$t" >/dev/null || die "importing $t into node c$c-n$i"
		done
	done
	kcs "$c" get crd serviceexports.multicluster.x-k8s.io serviceimports.multicluster.x-k8s.io >/dev/null ||
		die "cluster $c has no MCS CRDs (manifests/01-mcs-crds.yaml)"
done
log "images imported into every node"

# Every cluster's MCS leader must run its controller, and the clusters must be meshed.
mcs_ready() {
	local c=$1 pod
	for pod in $(kcs "$c" -n kube-system get pods -l app=patronus -o jsonpath='{.items[*].metadata.name}' 2>/dev/null); do
		kcs "$c" -n kube-system exec "$pod" -c daemon -- patronus status 2>/dev/null | grep 'MCS:' | grep -q 'controller running' && return 0
	done
	return 1
}
for c in 1 2; do
	wait_until 120 2 mcs_ready "$c" ||
		die "cluster $c: no agent reports 'MCS: controller running' in patronus status after 120 s"
done
log "both clusters' MCS controllers are running"

# The stand-ins must behave like the images they replace: the suite's "not exported ->
# inaccessible" spec would also pass if exec in its request pod failed. A pod of each image
# with the suite's way of starting it, in every cluster.
preflight() {
	local c=$1
	kcs "$c" delete namespace mcs-preflight --ignore-not-found --timeout=60s >/dev/null || true
	kcs "$c" create namespace mcs-preflight >/dev/null
	kcs "$c" -n mcs-preflight run request --image="$NETSHOOT_REF" --restart=Never -- /bin/sh -ec "while :; do echo '.'; sleep 5 ; done" >/dev/null
	kcs "$c" -n mcs-preflight run hello --image="$SOCAT_REF" --restart=Never --command -- /bin/sh -c 'socat TCP-LISTEN:42,crlf,reuseaddr,fork SYSTEM:"echo pod ip ok"' >/dev/null
	kcs "$c" -n mcs-preflight wait --for=condition=Ready pod/request pod/hello --timeout=60s >/dev/null || return 1
	local ip out
	ip=$(kcs "$c" -n mcs-preflight get pod hello -o jsonpath='{.status.podIP}')
	# socat may not listen yet when its container is Ready (no probe).
	for _ in $(seq 1 15); do
		out=$(kcs "$c" -n mcs-preflight exec request -- sh -c "echo hi | nc -v -w 2 -4 $ip 42 2>&1" 2>&1 || true)
		grep -q 'pod ip ok' <<<"$out" && return 0
		sleep 1
	done
	echo "$out" >&2
	return 1
}
for c in 1 2; do
	preflight "$c" || die "cluster $c: the stand-in images do not work as the suite uses them (namespace mcs-preflight)"
	kcs "$c" delete namespace mcs-preflight --wait=false >/dev/null
done
log "stand-in images checked in both clusters (request pod execs nc, socat answers)"

# --- the runner's namespace and kubeconfig
ip netns del "$RUNNER" 2>/dev/null || true
ip netns add "$RUNNER"
ip -n "$RUNNER" link set lo up
kubeconfig=$OUT/kubeconfig
{
	echo "apiVersion: v1"
	echo "kind: Config"
	echo "current-context: lab-c1"
	echo "clusters:"
	for c in 1 2; do
		ul=$LAB_PREFIX-c$c-ul
		ip -n "$ul" link add mcsr type veth peer name "eth-c$c" netns "$RUNNER"
		ip -n "$ul" link set mcsr master br0 up
		ip -n "$RUNNER" addr add "10.77.$c.250/24" dev "eth-c$c"
		ip -n "$RUNNER" link set "eth-c$c" up
		kf=$LAB_DIR/c$c/admin.kubeconfig
		echo "- name: lab-c$c"
		echo "  cluster:"
		echo "    server: $("$K8S_BIN/kubectl" --kubeconfig "$kf" config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
		echo "    certificate-authority-data: $("$K8S_BIN/kubectl" --kubeconfig "$kf" config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
	done
	echo "users:"
	for c in 1 2; do
		kf=$LAB_DIR/c$c/admin.kubeconfig
		echo "- name: admin-c$c"
		echo "  user:"
		echo "    client-certificate-data: $("$K8S_BIN/kubectl" --kubeconfig "$kf" config view --raw --minify --flatten -o jsonpath='{.users[0].user.client-certificate-data}')"
		echo "    client-key-data: $("$K8S_BIN/kubectl" --kubeconfig "$kf" config view --raw --minify --flatten -o jsonpath='{.users[0].user.client-key-data}')"
	done
	echo "contexts:"
	for c in 1 2; do
		echo "- name: lab-c$c"
		echo "  context: {cluster: lab-c$c, user: admin-c$c}"
	done
} >"$kubeconfig"
chmod 600 "$kubeconfig"
for c in 1 2; do
	nsenter --net="/run/netns/$RUNNER" -- "$K8S_BIN/kubectl" --kubeconfig "$kubeconfig" --context "lab-c$c" get --raw /readyz >/dev/null ||
		die "the runner namespace does not reach cluster $c's API server"
done

# --- run the suite
cmd=("$BIN" --kubeconfig="$kubeconfig" --contexts=lab-c1,lab-c2 --ginkgo.label-filter="$FILTER"
	--ginkgo.timeout="$TIMEOUT" --ginkgo.v --ginkgo.no-color --ginkgo.junit-report="$OUT/junit.xml"
	--organization=Patronus --project=patronus --version="$(git rev-parse --short HEAD)"
	--url=https://github.com/patronus/patronus)
log "running the suite (label filter $FILTER; log $OUT/suite.log)"
t0=$(date +%s)
rc=0
(cd "$OUT" && nsenter --net="/run/netns/$RUNNER" -- "${cmd[@]}") >"$OUT/suite.log" 2>&1 || rc=$?
t_suite=$(( $(date +%s) - t0 ))

# --- results: one row per spec that ran (junit); failures are summarised from suite.log below
pass=0
fail=0
junit_table_head Spec >"$OUT/table.md"
while IFS= read -r tc; do
	status=$(junit_attr status <<<"$tc")
	[ "$status" != skipped ] || continue
	name=$(junit_attr name <<<"$tc" | xml_unescape | sed 's/^\[It\] *//')
	secs=$(junit_secs <<<"$tc")
	case $name in \[BeforeSuite\]* | \[AfterSuite\]* | \[ReportAfterSuite\]*)
		[ "$status" = passed ] && continue ;;
	esac
	res=$(junit_result "$status")
	if [ "$res" = pass ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
	junit_row "${name//|/\\|}" "$res" "$secs" >>"$OUT/table.md"
done < <(junit_testcases "$OUT/junit.xml" 2>/dev/null || true)
ran=$(grep -o 'Ran [0-9]* of [0-9]* Specs' "$OUT/suite.log" | tail -1 || true)
total=$(( $(date +%s) - t_all ))
datapath=$(kcs 1 -n kube-system get configmap patronus-config -o jsonpath='{.data.datapath}' 2>/dev/null || echo '?')
{
	echo "## Multi-Cluster Services API conformance (sigs.k8s.io/mcs-api \`conformance/\`), $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- Command: \`scripts/mcs-conformance.sh\` (suite label filter \`$FILTER\`); the suite unmodified at"
	echo "  kubernetes-sigs/mcs-api commit \`$commit\`, built with \`go test -c\` in \`conformance/\`"
	echo "  (its dependencies from the Go module proxy), run as"
	echo "  \`conformance.test --kubeconfig=<one context per cluster> --contexts=lab-c1,lab-c2 --ginkgo.label-filter=$FILTER\`"
	echo "- Source: $origin. The Go module proxy does not serve the suite (\`conformance/\` is a nested module,"
	echo "  sigs.k8s.io/mcs-api/conformance: 404); the script takes a checkout from MCS_API_SRC"
	if [ $own_lab = 1 ]; then
		echo "- Lab: 2 clusters x $NODES node(s) ($LAB_PREFIX) brought up by the script; Patronus from manifests/, image built from the checkout at $(git rev-parse --short HEAD) (make build); datapath setting $datapath;"
	else
		echo "- Lab: 2 clusters x $NODES node(s) ($LAB_PREFIX), reused as it was (its Patronus image is the one it runs; checkout at $(git rev-parse --short HEAD)); datapath setting $datapath;"
	fi
	echo "  the suite's service is deployed and exported in lab-c1 (its first context), request pods run in both"
	echo "- Images: no registry is reachable, so \`alpine/socat:1.7.4.4\` and \`nicolaka/netshoot:v0.15\` are stand-ins"
	echo "  built by the script with the same references (Debian's dash, busybox, socat 1.7.4.4, netcat-openbsd), checked before"
	echo "  the suite (a request pod's nc reaches a socat pod in each cluster); the pod specs are the suite's"
	echo "- Result: $pass passed, $fail failed (${ran:-the suite did not report}; exit $rc)"
	echo "- Wall time: ${total}s in all (suite build/cache ${t_build}s, lab up ${t_up}s, suite ${t_suite}s; teardown not counted)"
	echo
	cat "$OUT/table.md"
	echo
} >"$OUT/results.md"
cat "$OUT/results.md"
if [ "$fail" != 0 ] || [ "$rc" != 0 ]; then
	grep -E '^\s*\[FAILED\]|non-conformant|Expected' "$OUT/suite.log" | head -40 >&2 || true
fi

if [ -n "$DOC" ]; then
	# Replace this suite's section (from its heading to the next "## " heading) in place, or
	# append it.
	cd "$ROOT"
	touch "$DOC"
	awk -v new="$OUT/results.md" '
		/^## Multi-Cluster Services API conformance/ { if (!done) { while ((getline l < new) > 0) print l; done = 1 }; skip = 1; next }
		/^## / { skip = 0 }
		!skip { print }
		END { if (!done) { print ""; while ((getline l < new) > 0) print l } }' "$DOC" >"$DOC.tmp.$$"
	mv -f "$DOC.tmp.$$" "$DOC"
	log "written to $DOC"
fi
[ "$fail" = 0 ] && [ "$rc" = 0 ] && [ "$pass" -gt 0 ] || die "$fail spec(s) failed, suite exit $rc (see $OUT/suite.log)"
log "all $pass specs passed in ${total}s"

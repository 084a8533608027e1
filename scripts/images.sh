#!/usr/bin/env bash
# Builds the local OCI images the runtime tests and the demo run (no registry can be reached
# here) and optionally imports them into a containerd:
#   registry.k8s.io/pause:3.10.2   the pod sandbox image: a tiny static Go program
#                                  (scripts/containerd/pause) that sleeps until SIGTERM
#   patronus.local/busybox:1.35    Debian's busybox-static (sh, ping, ip, wget, nc...)
# and with --lab also the images of the Kubernetes lab (scripts/lab/):
#   registry.k8s.io/e2e-test-images/busybox:1.37.0-2   the same busybox rootfs
#   registry.k8s.io/e2e-test-images/agnhost:2.66.1     agnhost plus what the e2e framework
#                                  execs in it: curl, dash as /bin/sh, netcat-openbsd as nc
#   registry.k8s.io/coredns/coredns:v1.15.0            CoreDNS
#   docker.io/library/patronus:dev the patronus binary (what manifests/ runs)
# The lab binaries come from $LAB_BIN (agnhost, coredns; scripts/lab/build.sh prints it) and
# $PATRONUS_BIN (default bin/patronus, built by `make build`).
#
# Usage: scripts/images.sh [--lab] [--import CONTAINERD_ADDRESS]
# Prints one line per image: "<reference> <archive path>". Archives are OCI image layouts
# in a tar (oci-layout, index.json, blobs/sha256/...), assembled by hand and reproducibly
# (fixed mtimes and owners), and cached by content under $CACHE/images/<name>-<digest>.tar:
# an unchanged image is not rewritten.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${PATRONUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patronus}
IMAGES=$CACHE/images
PAUSE_REF=${PAUSE_REF:-registry.k8s.io/pause:3.10.2}
BUSYBOX_REF=${BUSYBOX_REF:-patronus.local/busybox:1.35}
ARCH=$(go env GOARCH)

import_addr=
lab=0
while [ $# -gt 0 ]; do
	case "$1" in
	--import) import_addr=${2:?"--import needs a containerd socket address"}; shift 2 ;;
	--lab) lab=1; shift ;;
	*) echo "usage: scripts/images.sh [--lab] [--import CONTAINERD_ADDRESS]" >&2; exit 2 ;;
	esac
done

log() { echo "images: $*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$IMAGES"

# oci_archive NAME REF ROOTFS_DIR ENTRYPOINT_JSON [CMD_JSON]: writes the archive, prints
# its path.
oci_archive() {
	local name=$1 ref=$2 rootfs=$3 entrypoint=$4 cmd=${5:-}
	[ -z "$cmd" ] || entrypoint="$entrypoint,\"Cmd\":$cmd"
	local lay=$work/$name-layout
	mkdir -p "$lay/blobs/sha256"
	# Reproducible layer: sorted, fixed mtime, root-owned, no pax time headers.
	tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
		-C "$rootfs" -cf "$work/$name-layer.tar" .
	local layer layer_size
	layer=$(sha "$work/$name-layer.tar")
	layer_size=$(stat -c %s "$work/$name-layer.tar")
	mv "$work/$name-layer.tar" "$lay/blobs/sha256/$layer"
	printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"patronus scripts/images.sh"}]}' \
		"$ARCH" "$entrypoint" "$layer" >"$work/$name-config.json"
	local config config_size
	config=$(sha "$work/$name-config.json")
	config_size=$(stat -c %s "$work/$name-config.json")
	mv "$work/$name-config.json" "$lay/blobs/sha256/$config"
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
		"$config" "$config_size" "$layer" "$layer_size" >"$work/$name-manifest.json"
	local manifest manifest_size
	manifest=$(sha "$work/$name-manifest.json")
	manifest_size=$(stat -c %s "$work/$name-manifest.json")
	mv "$work/$name-manifest.json" "$lay/blobs/sha256/$manifest"
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
		"$manifest" "$manifest_size" "$ARCH" "$ref" "${ref##*:}" >"$lay/index.json"
	echo '{"imageLayoutVersion":"1.0.0"}' >"$lay/oci-layout"
	local out=$IMAGES/$name-${manifest:0:16}.tar
	if [ ! -s "$out" ]; then
		# Unique temp name + rename: concurrent runs (tests in parallel) never see half a file.
		tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$lay" -cf "$out.tmp.$$" oci-layout index.json blobs
		mv -f "$out.tmp.$$" "$out"
		log "built $ref -> $out"
	fi
	echo "$out"
}

# pause: a static Go binary, reproducible with -trimpath and no VCS stamp.
mkdir -p "$work/pause-root"
CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags '-s -w' -o "$work/pause-root/pause" ./scripts/containerd/pause
pause_tar=$(oci_archive pause "$PAUSE_REF" "$work/pause-root" '["/pause"]')

# busybox: Debian's static build, downloaded once with apt into the cache.
debs=$CACHE/debs
mkdir -p "$debs"
deb=$(ls "$debs"/busybox-static_*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
	log "downloading Debian's busybox-static with apt"
	mkdir -p "$work/dl"
	if ! (cd "$work/dl" && apt-get download busybox-static >/dev/null 2>&1); then
		apt-get update >/dev/null 2>&1
		(cd "$work/dl" && apt-get download busybox-static >/dev/null)
	fi
	dl=$(ls "$work"/dl/busybox-static_*.deb | head -1)
	mv -f "$dl" "$debs/"
	deb=$debs/$(basename "$dl")
fi
dpkg-deb -x "$deb" "$work/bb-deb"
bb=$work/busybox-root
mkdir -p "$bb/bin" "$bb/etc" "$bb/tmp" "$bb/proc" "$bb/sys" "$bb/dev" "$bb/root"
cp "$work/bb-deb/bin/busybox" "$bb/bin/busybox"
for applet in $("$bb/bin/busybox" --list); do
	[ "$applet" = busybox ] || ln -s busybox "$bb/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$bb/etc/passwd"
echo 'root:x:0:' >"$bb/etc/group"
chmod 1777 "$bb/tmp"
busybox_tar=$(oci_archive busybox "$BUSYBOX_REF" "$bb" '["/bin/sh"]')

refs=("$PAUSE_REF $pause_tar" "$BUSYBOX_REF $busybox_tar")

# deb PACKAGE: path of Debian's .deb for PACKAGE, downloaded once with apt into the cache.
deb() {
	local d
	d=$(ls "$debs/$1"_*.deb 2>/dev/null | head -1 || true)
	if [ -z "$d" ]; then
		log "downloading Debian's $1 with apt"
		mkdir -p "$work/dl-$1"
		if ! (cd "$work/dl-$1" && apt-get download "$1" >/dev/null 2>&1); then
			apt-get update >/dev/null 2>&1
			(cd "$work/dl-$1" && apt-get download "$1" >/dev/null 2>&1)
		fi
		d=$(ls "$work/dl-$1/$1"_*.deb | head -1)
		mv -f "$d" "$debs/"
		d=$debs/$(basename "$d")
	fi
	echo "$d"
}

# with_libs BINARY ROOTFS DEST: copies a dynamically linked binary to ROOTFS/DEST and every
# shared library ldd resolves for it (and the loader) to the same path inside ROOTFS.
with_libs() {
	local bin=$1 root=$2 dest=$3 lib
	mkdir -p "$root/$(dirname "$dest")"
	cp -L "$bin" "$root/$dest"
	for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
		mkdir -p "$root/$(dirname "$lib")"
		cp -L "$lib" "$root/$lib"
	done
}

base_rootfs() {
	mkdir -p "$1"/{bin,etc,tmp,proc,sys,dev,root,usr/bin}
	echo 'root:x:0:0:root:/root:/bin/sh' >"$1/etc/passwd"
	echo 'root:x:0:' >"$1/etc/group"
	echo 'hosts: files dns' >"$1/etc/nsswitch.conf"
	chmod 1777 "$1/tmp"
}

if [ $lab = 1 ]; then
	LAB_BIN=${LAB_BIN:?"--lab needs LAB_BIN (the directory scripts/lab/build.sh prints)"}
	PATRONUS_BIN=${PATRONUS_BIN:-bin/patronus}
	for f in "$LAB_BIN/agnhost" "$LAB_BIN/coredns" "$PATRONUS_BIN"; do
		[ -x "$f" ] || { log "missing $f (run scripts/lab/build.sh and make build)"; exit 1; }
	done
	e2e_busybox_tar=$(oci_archive e2e-busybox "${E2E_BUSYBOX_REF:-registry.k8s.io/e2e-test-images/busybox:1.37.0-2}" "$bb" '["/bin/sh"]')
	refs+=("${E2E_BUSYBOX_REF:-registry.k8s.io/e2e-test-images/busybox:1.37.0-2} $e2e_busybox_tar")

	# agnhost: the e2e framework execs curl, `nc -v -t -w`, and /bin/sh in it; busybox's nc
	# and sh lack options it uses, so Debian's are copied in with their libraries.
	ag=$work/agnhost-root
	base_rootfs "$ag"
	cp "$LAB_BIN/agnhost" "$ag/agnhost"
	with_libs /usr/bin/dash "$ag" /bin/dash
	ln -s dash "$ag/bin/sh"
	with_libs /usr/bin/curl "$ag" /usr/bin/curl
	dpkg-deb -x "$(deb netcat-openbsd)" "$work/nc-deb"
	with_libs "$work/nc-deb/bin/nc.openbsd" "$ag" /usr/bin/nc
	cp "$bb/bin/busybox" "$ag/bin/busybox"
	for t in cat ls sleep echo; do ln -s busybox "$ag/bin/$t"; done
	AGNHOST_REF=${AGNHOST_REF:-registry.k8s.io/e2e-test-images/agnhost:2.66.1}
	refs+=("$AGNHOST_REF $(oci_archive agnhost "$AGNHOST_REF" "$ag" '["/agnhost"]' '["pause"]')")

	dns=$work/coredns-root
	base_rootfs "$dns"
	cp "$LAB_BIN/coredns" "$dns/coredns"
	COREDNS_REF=${COREDNS_REF:-registry.k8s.io/coredns/coredns:v1.15.0}
	refs+=("$COREDNS_REF $(oci_archive coredns "$COREDNS_REF" "$dns" '["/coredns"]')")

	pr=$work/patronus-root
	base_rootfs "$pr"
	mkdir -p "$pr/usr/local/bin"
	cp "$PATRONUS_BIN" "$pr/usr/local/bin/patronus"
	PATRONUS_REF=${PATRONUS_REF:-docker.io/library/patronus:dev}
	refs+=("$PATRONUS_REF $(oci_archive patronus "$PATRONUS_REF" "$pr" '["/usr/local/bin/patronus"]')")
fi

if [ -n "$import_addr" ]; then
	for r in "${refs[@]}"; do
		ctr --address "$import_addr" -n k8s.io images import --no-unpack=false "${r#* }" >/dev/null
	done
	log "imported into containerd at $import_addr"
fi
printf '%s\n' "${refs[@]}"

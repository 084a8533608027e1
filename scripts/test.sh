#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls `make test`, which calls this).
# Installs what is missing (Debian packages, Kubernetes binaries and reference CNI plugins,
# cached by version), then runs every Go test, privileged ones included (they need root and
# make their own network namespaces), upstream NetworkPolicy e2e cases against a lab
# cluster, and a short fuzz run of the CNI config decoder.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "installing Debian packages (if missing)"
./scripts/deps.sh
step "building or reusing Kubernetes binaries (first time: several minutes)"
PATRONUS_K8S_BIN=$(./scripts/build-k8s.sh)
export PATRONUS_K8S_BIN
step "building or reusing reference CNI plugins"
PATRONUS_CNI_PLUGINS=$(./scripts/build-cni-plugins.sh)
export PATRONUS_CNI_PLUGINS

step "building or reusing crictl (for the containerd tests)"
PATRONUS_CRICTL=$(./scripts/containerd/build-crictl.sh)/crictl
export PATRONUS_CRICTL

step "building or reusing kube-proxy and CoreDNS (policy via Services, MCS DNS; first time: many minutes)"
PATRONUS_KUBE_PROXY=$(./scripts/lab/build.sh kube-proxy)/kube-proxy
export PATRONUS_KUBE_PROXY
PATRONUS_COREDNS=$(./scripts/lab/build.sh coredns)/coredns
export PATRONUS_COREDNS

step "go vet"
go vet ./...
if [ -x scripts/check-generated.sh ]; then
	step "checking generated BPF bindings are current"
	./scripts/check-generated.sh
fi
step "building patronus"
make build
export PATRONUS_BIN=$PWD/bin/patronus

step "go test"
# -p 2: the machine has two cores; privileged tests use unique netns names so packages may
# run side by side.
go test -count=1 -p 2 -timeout 40m ./...

step "conformance: lab.sh smoke + 12 upstream NetworkPolicy e2e cases on a 1x2 lab of its own"
./scripts/lab/ci-conformance.sh

step "fuzzing the CNI config decoder (short run)"
# A count, not a duration: Go 1.26's fuzz coordinator can fail a duration run with a bare
# "context deadline exceeded" at the deadline on a loaded machine (golang/go#75804, fixed
# in Go 1.27), with no failing input. 60000 runs take about 10-20 s here.
go test -run '^$' -fuzz '^FuzzParseConfig$' -fuzztime 60000x ./cni/

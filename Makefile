# Patronus. `make demo` installs what is missing and runs the local demo; `make test` runs
# every test (what CI runs).
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/patronus/patronus/cli.Version=$(VERSION)

.PHONY: all build test demo demo-down bench generate clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/patronus .

test:
	./scripts/test.sh

demo:
	./scripts/demo.sh

demo-down:
	./scripts/demo.sh down

bench:
	./scripts/bench/run.sh

generate:
	$(GO) generate ./...

clean:
	rm -rf bin

# The Kubernetes lab (docs/LAB.md): LAB_CLUSTERS x LAB_NODES (default 2 x 2) with Patronus
# installed from manifests/; conformance runs upstream NetworkPolicy e2e cases against it.
.PHONY: lab lab-down conformance ci-conformance mcs-conformance
lab:
	./scripts/lab/lab.sh up

lab-down:
	./scripts/lab/lab.sh down

conformance:
	./scripts/lab/conformance.sh

# What CI runs after the Go tests: lab.sh smoke + 12 upstream Netpol cases on a 1 x 2 lab
# of its own (torn down at the end).
ci-conformance:
	./scripts/lab/ci-conformance.sh

# The MCS API's own conformance suite against two lab clusters (needs a checkout of
# kubernetes-sigs/mcs-api: MCS_API_SRC; the Go module proxy does not serve it).
mcs-conformance:
	./scripts/mcs-conformance.sh

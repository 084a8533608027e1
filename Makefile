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

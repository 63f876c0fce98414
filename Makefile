# updater: continuous deployment for Docker Swarm stacks.
# `make` alone lists the targets.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGE    ?= updater:$(VERSION)
GO_IMAGE ?= golang:1.26-bookworm
LDFLAGS  := -s -w -X main.version=$(VERSION)
# The images' org.opencontainers.image.revision and .created labels. Created
# is the commit's time, not the clock's: a commit builds to one digest.
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
CREATED  ?= $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null)
PLATFORMS ?= linux/amd64,linux/arm64,linux/arm/v7

.DEFAULT_GOAL := help
.PHONY: help demo demo-down build test unit e2e e2e-multinode e2e-engines soak fuzz bench bench-e2e bench-e2e-multinode lint image image-multiarch clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

demo: ## the demo: a stack with the updater rolling v2 forward and a broken v3 back; its status page and Slack messages
	demo/demo.sh

demo-down: ## remove everything make demo created
	demo/down.sh

build: ## build bin/updater (static)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/updater ./cmd/updater

test: lint build unit e2e e2e-multinode e2e-engines ## everything CI runs: lint, build, unit tests, the e2e suites on a real swarm, the engine matrix

unit: ## unit tests (no Docker needed)
	$(GO) test -race -count=1 ./...

# E2E_REQUIRED makes a missing Docker a failure rather than a skip. The
# suite's log is kept for the engine matrix's table (make e2e-engines).
E2E_LOGS ?= bin/e2e-logs
# The multi-arch image's check is its own run after the suite, so its
# three cross-compiles don't compete with the suite's timed waits.
e2e: ## end-to-end tests: real dockerd in swarm mode, real registry; then the multi-arch image pulled by dockerd
	test/e2e/matrix.sh log $(E2E_LOGS)/host.log env E2E_REQUIRED=1 $(GO) test -tags e2e -count=1 -timeout 35m -v -skip MultiNode ./test/e2e/
	E2E_REQUIRED=1 $(GO) test -tags e2e -count=1 -timeout 10m -v -run TestRealImage ./scripts/multiarch/

# Its own go test run, after e2e: making the 2-node swarm re-initialises
# the host's swarm, which removes every service. Needs root (a network
# namespace and a second dockerd); leaves the swarm advertising 127.0.0.1.
e2e-multinode: ## the multi-node suite: a 2-node swarm on this machine (manager + a worker in a netns)
	E2E_REQUIRED=1 E2E_MULTINODE=1 $(GO) test -tags e2e -count=1 -timeout 15m -v -run MultiNode ./test/e2e/

# The core scenarios (test/e2e/matrix.sh) on a current engine too: Debian
# sid's docker.io 28.5 and containerd 2.1 (26.1: trixie's), fetched once
# into ENGINE_CACHE (test/e2e/engine.sh),
# in a network namespace of its own (one engine start for the whole run;
# the host's dockerd is not touched). Then the scenario × engine table from
# this run's log and make e2e's. Needs root.
ENGINES ?= 28.5
e2e-engines: ## the core e2e scenarios on Docker 28.5 as well (ENGINES="28.5 26.1" for more), then the scenario × engine table
	@set -e; for e in $(ENGINES); do \
	  ENGINE=$$e test/e2e/engine.sh run $(E2E_LOGS)/$$e.log -- env E2E_REQUIRED=1 \
	    $(GO) test -tags e2e -count=1 -timeout 15m -v -run "$$(test/e2e/matrix.sh run-regex)" ./test/e2e/; \
	done
	@test/e2e/matrix.sh table $(E2E_LOGS)/host.log $(foreach e,$(ENGINES),$(E2E_LOGS)/$(e).log)

soak: ## 2,000 cycles against a faulty registry and Swarm, with its figures (it also runs, quietly, in make unit)
	$(GO) test -count=1 -run '^TestSoak$$' -v ./internal/soak/

# The committed seeds (testdata/fuzz) replay in make unit; this explores.
FUZZTIME ?= 30s
fuzz: ## run every fuzz target for FUZZTIME (default 30s) each
	@set -e; for pkg in $$($(GO) list ./internal/...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

bench: ## benchmarks: one cycle over 1,000 services sharing 200 tags
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./internal/...

bench-e2e: ## benchmarks on the real swarm: idle cycle cost, hook job and probe overhead, crash-to-rollback in a bake
	E2E_REQUIRED=1 $(GO) test -tags e2e -run '^$$' -bench . -benchtime 5x -count 5 ./test/e2e/

bench-e2e-multinode: ## on the 2-node swarm: deploy time worker vs manager (5 each), bytes pruned over 10 deploys
	E2E_REQUIRED=1 E2E_MULTINODE=1 $(GO) test -tags e2e -count=1 -timeout 20m -run '^$$' -bench MultiNodeDeploy -benchtime 5x ./test/e2e/
	E2E_REQUIRED=1 E2E_MULTINODE=1 $(GO) test -tags e2e -count=1 -timeout 20m -run '^$$' -bench MultiNodePrune -benchtime 10x ./test/e2e/

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: run gofmt -w on the files above'; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/e2e/

# Without Docker Hub the builder image is made from the local Go toolchain.
image: ## build the updater image from the Dockerfile
	@docker image inspect $(GO_IMAGE) >/dev/null 2>&1 || docker pull -q $(GO_IMAGE) 2>/dev/null || scripts/offline-go-image.sh $(GO_IMAGE)
	docker build -q --build-arg GO_IMAGE=$(GO_IMAGE) --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$(REVISION) --build-arg CREATED=$(CREATED) -t $(IMAGE) .

# Cross-compiled, no QEMU or buildx, no Docker at all: scripts/multiarch
# builds each platform's binary and pushes one OCI index, as ko does.
image-multiarch: ## push the image for PLATFORMS (amd64, arm64, arm/v7) as one index: MULTIARCH_IMAGE=host:port/repo:tag
	@test -n '$(MULTIARCH_IMAGE)' || { echo 'usage: make image-multiarch MULTIARCH_IMAGE=registry.example.com/updater:$(VERSION) [PLATFORMS=…]'; exit 2; }
	$(GO) run ./scripts/multiarch -image '$(MULTIARCH_IMAGE)' -platforms '$(PLATFORMS)' -ldflags '$(LDFLAGS)' \
	  -version '$(VERSION)' -revision '$(REVISION)' -created '$(CREATED)'

clean: ## remove build output
	rm -rf bin

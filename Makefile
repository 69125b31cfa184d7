# edgefleet — common tasks. `make help` lists them.
GO      ?= go
BIN     ?= bin
VERSION ?= dev
LDFLAGS := -s -w -X github.com/edgefleet/edgefleet/internal/buildinfo.Version=$(VERSION)
# gorgonia.org/tensor/internal/execution is generated code: a kernel for every
# element type and operation (1.3 MB of machine code on arm64, nearly all of it
# never called). Compiled without inlining (it inlines no helpers and is
# inlined into nothing) it makes the stripped arm64 edge-agent 458,752 bytes
# smaller; edge-agent bench ml measured no difference beyond noise. The
# stripped arm64 edge-agent must stay <= 28 MiB (test/arm64_test.go builds it
# with `make arm64-agent`).
GCFLAGS := gorgonia.org/tensor/internal/execution=-l

.PHONY: help sim test build bench-crdt arm64 arm64-agent clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

sim: build ## run a 10-agent fleet and its control plane on this machine (embedded defaults) until Ctrl-C
	$(BIN)/edgectl sim --serve

test: ## install test dependencies (Mosquitto) and run the whole test suite
	./scripts/test.sh

build: ## build edge-agent and edgectl for this machine into ./bin
	CGO_ENABLED=0 $(GO) build -trimpath -gcflags '$(GCFLAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/edge-agent ./cmd/edgectl

arm64: ## cross-compile both binaries for linux/arm64 into ./bin/linux-arm64
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -gcflags '$(GCFLAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/linux-arm64/ ./cmd/edge-agent ./cmd/edgectl

arm64-agent: ## cross-compile edge-agent alone for linux/arm64 into ./bin/linux-arm64
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -gcflags '$(GCFLAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/linux-arm64/ ./cmd/edge-agent

bench-crdt: ## CRDT store throughput beside plain SQLite, as JSON
	$(GO) run ./cmd/edge-agent bench crdt --json

clean: ## remove build output
	rm -rf $(BIN)

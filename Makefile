# edgefleet — common tasks. `make help` lists them.
GO      ?= go
BIN     ?= bin
VERSION ?= dev
LDFLAGS := -s -w -X github.com/edgefleet/edgefleet/internal/buildinfo.Version=$(VERSION)
# Packages compiled without inlining, to keep the stripped arm64 edge-agent
# under 28 MiB (test/arm64_test.go builds it with `make arm64-agent`): code a
# device runs rarely or never, where inlining only adds size.
# - gorgonia.org/tensor/internal/execution is generated: a kernel for every
#   element type and operation (1.3 MB of arm64 code, nearly all never called);
#   -458,752 bytes, and edge-agent bench ml measured no difference beyond noise.
# - protobuf (Prometheus's exposition formats), gogo/protobuf (gorgonia's tensor
#   serialisation) and miekg/dns (memberlist's DNS join): -458,752 bytes more.
# - gonum's lapack, arrow and gographviz, which tensor and gorgonia link but the
#   agent never calls: -65,536 bytes (one segment step) more.
# - gorgonia and tensor themselves (graph building and tensor methods; the agent
#   runs them only in a local training job): -196,608 bytes more. edge-agent
#   bench ml --cpu-clock, two interleaved runs each (load 5-7): MLP step at
#   batch 256 0.913/0.868 -> 0.896/0.896 of gonum, batched inference
#   0.948/1.078 -> 1.008/1.031, LR step 0.20/0.19 -> 0.18/0.14.
# - carbon-aware scheduling (greensched and its providers, agent/deferred) and
#   the device identity watch took it to 29,360,290; compiling more cold paths
#   without inlining took it back to 29,229,218: greensched, agent/deferred,
#   the control-plane client types (cpapi), dkms, the uplink, the local API,
#   the command itself, Prometheus's exposition code and net/http (the local
#   API and the uplink; not the ingestion path). The bench harnesses (bench/...)
#   keep inlining, so the baselines they measure are built as usual. Only
#   edge-agent is built with this list: edgectl (the control plane) is not.
# - secure aggregation's client (fedlearn/secagg in the uplink) took it to
#   29,360,290 again; the agent's wiring package and agent/training (job
#   bookkeeping; the training itself is gorgonia's) without inlining: back to
#   29,229,218.
# With inlining everywhere the agent is 29,687,970 bytes (28.31 MiB). Most of
# gorgonia's cost is that tensor.Dtype embeds reflect.Type, which makes the
# linker keep every exported method in the binary (see README, ARM).
NOINLINE := github.com/edgefleet/edgefleet/greensched/... github.com/edgefleet/edgefleet/agent github.com/edgefleet/edgefleet/agent/training github.com/edgefleet/edgefleet/controlplane/cpapi github.com/edgefleet/edgefleet/dkms/... github.com/edgefleet/edgefleet/agent/uplink github.com/edgefleet/edgefleet/agent/localapi github.com/edgefleet/edgefleet/cmd/edge-agent github.com/edgefleet/edgefleet/agent/deferred github.com/prometheus/common/... net/http gorgonia.org/tensor/internal/execution google.golang.org/protobuf/... github.com/gogo/... github.com/miekg/dns gonum.org/v1/gonum/lapack/... github.com/apache/arrow/... github.com/awalterschulze/... gorgonia.org/gorgonia gorgonia.org/tensor gopkg.in/yaml.v3 github.com/spf13/... encoding/gob text/template/...
GCFLAGS  := $(foreach p,$(NOINLINE),-gcflags=$(p)=-l)

.PHONY: help sim test build bench-crdt arm64 arm64-agent clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

sim: build ## run a 10-agent fleet and its control plane on this machine (embedded defaults) until Ctrl-C
	$(BIN)/edgectl sim --serve

test: ## install test dependencies (Mosquitto) and run the whole test suite
	./scripts/test.sh

build: ## build edge-agent and edgectl for this machine into ./bin
	CGO_ENABLED=0 $(GO) build -trimpath $(GCFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/edge-agent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/edgectl

arm64: ## cross-compile both binaries for linux/arm64 into ./bin/linux-arm64
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath $(GCFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN)/linux-arm64/ ./cmd/edge-agent
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/linux-arm64/ ./cmd/edgectl

arm64-agent: ## cross-compile edge-agent alone for linux/arm64 into ./bin/linux-arm64
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath $(GCFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN)/linux-arm64/ ./cmd/edge-agent

bench-crdt: ## CRDT store throughput beside plain SQLite, as JSON
	$(GO) run ./cmd/edge-agent bench crdt --json

clean: ## remove build output
	rm -rf $(BIN)

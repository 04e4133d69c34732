# Ferry — build, demo and test entry points. `make help` lists targets.
GO        ?= go
BIN       := bin

.PHONY: help build demo test test-deps check lint fuzz bench clean

help: ## show this help
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/ferry and bin/wanlab
	$(GO) build -o $(BIN)/ferry ./cmd/ferry
	$(GO) build -o $(BIN)/wanlab ./cmd/wanlab

demo: build ## run the main job on this machine with zero configuration
	./scripts/demo.sh

test-deps: ## install what the test suite needs (Debian, as root)
	./scripts/install-test-deps.sh

test: test-deps ## install prerequisites, then run the whole test suite (what CI runs)
	./scripts/test.sh

check: ## vet + staticcheck + gofmt, no installs
	./scripts/lint.sh

fuzz: ## run every fuzz target for a short while (FUZZTIME=30s)
	./scripts/fuzz.sh

bench: build ## loopback benchmark of SUDP against TCP, quic-go and kcp-go
	cd bench && $(GO) run ./cmd/transportbench

clean:
	rm -rf $(BIN)

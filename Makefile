# Ferry — build, demo and test entry points. `make help` lists targets.
GO        ?= go
BIN       := bin

.PHONY: help build demo perf-demo test test-deps check lint fuzz bench clean guest package

help: ## show this help
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/ferry and bin/wanlab
	$(GO) build -o $(BIN)/ferry ./cmd/ferry
	$(GO) build -o $(BIN)/wanlab ./cmd/wanlab

demo: build ## the whole system on this machine, zero configuration (ferry demo; DEMO_FLAGS=--keep)
	./$(BIN)/ferry demo $(DEMO_FLAGS)

perf-demo: build ## a SUDP link test: one GiB between two local endpoints
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

package: ## release binary and Debian package under dist/ (VERSION=1.2.3; default: git describe)
	./scripts/package.sh

clean:
	rm -rf $(BIN) dist

GUEST := internal/hypervisor/qemu/guest
guest: ## reassemble the QEMU test guest (needs binutils; the result is committed)
	as --32 -o $(GUEST)/guest.o $(GUEST)/guest.S
	ld -m elf_i386 -Ttext=0x100000 --oformat=binary -o $(GUEST)/guest.bin $(GUEST)/guest.o
	rm -f $(GUEST)/guest.o

BENCH_WAN_FLAGS ?= --bytes 256MiB --reps 3 --time-cap 40s
.PHONY: bench-wan
bench-wan: ## WAN-lab benchmark matrix (0/1/5/15 % loss at 100 Mbit/s 50 ms, 1 Gbit/s 100 ms); needs root
	@if [ "$$(id -u)" != 0 ]; then echo "make bench-wan: the WAN lab needs root (network namespaces, TUN devices); run it as root, e.g. sudo make bench-wan" >&2; exit 1; fi
	$(MAKE) build
	cd bench && $(GO) run ./cmd/transportbench --matrix $(BENCH_WAN_FLAGS) --protos sudp,tcp-cubic,tcp-bbr,quic,kcp --wanlab ../bin/wanlab --ferry ../bin/ferry --markdown

# podnet: two entry points for a fresh Debian 12 machine, as root.
#   make demo   installs what podnet needs, then runs the live demonstration
#   make test   installs what the tests need, then runs the whole suite
# Every install step is idempotent and quick when nothing is missing.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# System packages: the kernel tools, the Go reference plugins for interop, Go + libcni sources
# for the libcni interop driver (built offline in GOPATH mode), and a C compiler with the
# kernel's uapi headers (every netlink constant podnet defines is checked against them). The
# native plugin shim is built from source with Debian's gcc (scripts/build-shim.sh). libnftables1
# is the in-process nftables backend; iperf3 measures pod-to-pod throughput in bench/; openssl makes the
# certificate of the tests' local Kubernetes API server.
RUN_PKGS := iproute2 nftables libnftables1 iputils-ping containernetworking-plugins python3 python3-venv procps \
	gcc libc6-dev
TEST_PKGS := $(RUN_PKGS) golang-go golang-github-appc-cni-dev git linux-libc-dev iperf3 openssl

.PHONY: demo test bench lint typecheck install-run install-test clean

demo: install-run
	$(VENV)/bin/podnet demo

test: install-test
	bash scripts/run-tests.sh

bench: install-test
	bash scripts/install-venv.sh "$(PYTHON)" "$(VENV)" ".[test,bench]"
	$(PY) -m bench

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

typecheck: install-test
	$(VENV)/bin/mypy

install-run:
	bash scripts/install-system-packages.sh $(RUN_PKGS)
	bash scripts/install-venv.sh "$(PYTHON)" "$(VENV)" .
	bash scripts/build-shim.sh "$(VENV)"

install-test:
	bash scripts/install-system-packages.sh $(TEST_PKGS)
	bash scripts/install-venv.sh "$(PYTHON)" "$(VENV)" ".[test]"
	bash scripts/build-shim.sh "$(VENV)"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

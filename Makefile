# pyvmm: build, test and CI entry points.  `make test` is what CI runs (.ci/run).
#
#   make venv          host .venv with pyvmm installed editable, plus test extras
#   make test-host     unit tests that need no KVM (pytest -m 'not kvm') on the host
#   make machine       build/cache the arm64 test machine (ci/qemu-aarch64/setup)
#   make guests        build the guests the KVM tests boot (guests/linux/build -> out/guest/)
#   make test-machine  KVM tests (pytest -m kvm): natively on an arm64 host with
#                      /dev/kvm, otherwise inside the emulated arm64 test machine
#   make test          all of the above (host-deps + venv + test-host + machine + guests + test-machine)
#   make demo          `pyvmm caps` inside the test machine, then guests/linux/demo
#   make bench         benchmarks (none yet)
#   make clean         remove .venv and build output (clean-cache: the machine cache too)

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

PYTHON ?= python3
VENV := .venv
RUN := ci/qemu-aarch64/run
RUN_FLAGS ?=
PYVMM_CACHE ?= $(HOME)/.cache/pyvmm

# The pytest command run inside the test machine (or natively on an arm64 KVM host).
# One variable, so another run (e.g. with the project's SME kernel:
# `$(RUN) --kernel $$(ci/qemu-aarch64/kernel/build) -- $(MACHINE_PYTEST) -m sme_kernel`)
# can reuse it.
MACHINE_PYTEST = python3 -m pytest -m kvm -p no:cacheprovider -ra tests

# arm64 host with a usable /dev/kvm: no emulation needed
NATIVE_KVM := $(shell [ "$$(uname -m)" = aarch64 ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] && echo 1)

# pytest exit 5 = "no tests collected": report it, don't fail (the suite grows over time)
define no_tests_ok
rc=$$?; if [ $$rc = 5 ]; then echo "$(1): no tests selected"; else exit $$rc; fi
endef

.PHONY: all host-deps venv test-host machine guests test-machine test demo bench clean clean-cache

all: test

host-deps:
	@ci/host-deps

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then ci/host-deps; fi
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@PIP_DISABLE_PIP_VERSION_CHECK=1 $(VENV)/bin/pip install -q -e '.[test]'
	@touch $@
	@echo "venv: $(VENV) ready ($$($(VENV)/bin/python --version))"

test-host: venv
	$(VENV)/bin/python -m pytest -m 'not kvm' tests || { $(call no_tests_ok,test-host); }

machine:
ifeq ($(NATIVE_KVM),1)
	@echo "machine: arm64 host with /dev/kvm, no test machine needed"
else
	@ci/qemu-aarch64/setup
endif

guests: machine
	@if [ -x guests/linux/build ]; then guests/linux/build; fi

test-machine: $(if $(NATIVE_KVM),venv)
ifeq ($(NATIVE_KVM),1)
	PYVMM_REQUIRE_KVM=1 $(VENV)/bin/$(MACHINE_PYTEST) || { $(call no_tests_ok,test-machine); }
else
	@mkdir -p out
	$(RUN) $(RUN_FLAGS) -- $(MACHINE_PYTEST) 2>&1 | tee out/test-machine.log || { $(call no_tests_ok,test-machine); }
	@echo "test-machine: $$(grep -E '^=+ .*(passed|failed|error|no tests ran).* in [0-9.]+s' out/test-machine.log | tail -n1 | tr -d '=' | sed 's/^ *//; s/ *$$//')"
endif

test: host-deps venv test-host machine guests test-machine

demo:
	$(RUN) $(RUN_FLAGS) -- pyvmm caps
	@if [ -x guests/linux/demo ]; then guests/linux/demo; fi

bench:
	@echo 'no benchmarks yet'

clean:
	rm -rf $(VENV) out build .pytest_cache .hypothesis *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-cache:
	rm -rf $(PYVMM_CACHE)/qemu-aarch64

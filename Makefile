# pyvmm: build, test and CI entry points.  `make test` is what CI runs (.ci/run).
#
#   make venv          host .venv with pyvmm installed editable, plus test extras
#   make test-host     unit tests that need no KVM (pytest -m 'not kvm') on the host
#   make typecheck     mypy on the package (configuration in pyproject.toml)
#   make docs          the API reference with pdoc into out/docs (any warning is an error)
#   make machine       build/cache the arm64 test machine (ci/qemu-aarch64/setup)
#   make guests        build the guests the KVM tests boot (guests/linux/build -> out/guest/)
#   make test-machine  KVM tests (pytest -m kvm): natively on an arm64 host with
#                      /dev/kvm, otherwise inside the emulated arm64 test machine
#   make kernel        build (or reuse) the project's SME kernel (ci/qemu-aarch64/kernel/build)
#   make test-sme-kernel  the SME suite (pytest -m sme_kernel) in the test machine booted
#                      with the project's SME kernel; SME tests fail there instead of skipping
#   make test-sme-kernel-nvhe  the SME suite's abi-check, guest and stress tests with the SME
#                      kernel booted with kvm-arm.mode=nvhe (SME on nVHE hosts)
#   make test-selftests  the kernel's own KVM selftests (ci/qemu-aarch64/kernel/selftests) on
#                      Debian's kernel, then on the SME kernel (VHE) and the SME kernel with
#                      kvm-arm.mode=nvhe; a test that passes on Debian's kernel (in the same
#                      mode) must pass on ours
#   make test          all of the above (host-deps + venv + test-host + typecheck + docs +
#                      machine + guests, then two lanes side by side: test-machine | kernel +
#                      test-sme-kernel + test-sme-kernel-nvhe + test-selftests; each line
#                      prefixed with its lane, logs in out/lanes/; TEST_LANES=1: one by one)
#   make demo          `pyvmm caps` inside the test machine, then guests/linux/demo (a guest's
#                      CPU features; a guest reaching the host over the network and reading a
#                      shared directory)
#   make bench         benchmarks: start-up (pyvmm run to the first KVM_RUN vs the bare
#                      interpreter), boot time vs QEMU, SME state save/restore vs the ioctl floor,
#                      live snapshot + restore vs QEMU migration to a file, live migration vs
#                      QEMU migrate to a second QEMU -incoming, data planes (TCP over
#                      vhost-net, vsock, virtio-fs) vs QEMU, the cost of one virtio-mmio
#                      register access (KVM round trip vs Python)
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
MACHINE_PYTEST = python3 -m pytest -p no:cacheprovider -ra tests
# The test files that hold tests with the given markers, found by collecting on the host (7 s)
# so that the test machine imports only those: collecting all of tests/ under emulation took one
# to two minutes a run. Empty when the host cannot collect; callers then fall back to tests/.
machine_files = $$($(VENV)/bin/python -m pytest -p no:cacheprovider --collect-only -q -m '$(1)' tests \
	2>/dev/null | sed -n 's/::.*//p' | sort -u | tr '\n' ' ' || true)
STOCK_MARKERS = kvm and not sme_kernel
SME_MARKERS = sme_kernel
KERNEL_BUILD := ci/qemu-aarch64/kernel/build
SME_NVHE_TESTS = tests/kvm/test_sme_abi.py tests/kvm/test_sme_guest.py tests/kvm/test_sme_stress.py
SELFTESTS := ci/qemu-aarch64/kernel/selftests
ST_OUT := out/kvm-selftests

# arm64 host with a usable /dev/kvm: no emulation needed
NATIVE_KVM := $(shell [ "$$(uname -m)" = aarch64 ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] && echo 1)

# Print pytest's summary line of a log as the suite's test count.
define summary
echo "$(1): $$(grep -E '^=+ .*(passed|failed|error|no tests ran).* in [0-9.]+s' $(2) | tail -n1 | tr -d '=' | sed 's/^ *//; s/ *$$//')"
endef

.PHONY: all host-deps venv test-host machine guests test-machine kernel test-sme-kernel test-sme-kernel-nvhe \
	test-selftests test demo bench typecheck docs \
	clean clean-cache

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
	$(VENV)/bin/python -m pytest -m 'not kvm' tests

typecheck: venv
	$(VENV)/bin/mypy

# The API reference: the public surface (pyvmm, pyvmm.api) first, then the
# layers a library user may reach into (packages without __all__ bring their
# modules). pdoc's warnings (a name in __all__ that does not resolve, an
# annotation it cannot read) are errors; deprecations in the tools are not ours.
DOC_MODULES = pyvmm pyvmm.api pyvmm.errors pyvmm.kvm pyvmm.vm pyvmm.vcpu pyvmm.vecstate pyvmm.sme \
	pyvmm.caps pyvmm.arm64 pyvmm.boot pyvmm.devices pyvmm.machine pyvmm.machine.session \
	pyvmm.machine.kick pyvmm.snapshot pyvmm.control pyvmm.migration pyvmm.dirty_log
docs: venv
	@rm -rf out/docs
	$(VENV)/bin/python -W error -W ignore::DeprecationWarning -m pdoc -o out/docs $(DOC_MODULES)
	@echo "docs: out/docs/index.html ($$(find out/docs -name '*.html' | wc -l) pages)"

machine:
ifeq ($(NATIVE_KVM),1)
	@echo "machine: arm64 host with /dev/kvm, no test machine needed"
else
	@ci/qemu-aarch64/setup
endif

guests: machine
	@if [ -x guests/linux/build ]; then guests/linux/build; fi

test-machine: venv
ifeq ($(NATIVE_KVM),1)
	PYVMM_REQUIRE_KVM=1 $(VENV)/bin/$(MACHINE_PYTEST) -m '$(STOCK_MARKERS)'
else
	@mkdir -p out
	files="$(call machine_files,$(STOCK_MARKERS))"; \
	$(RUN) $(RUN_FLAGS) -- $(MACHINE_PYTEST:tests=) -m '$(STOCK_MARKERS)' $${files:-tests} 2>&1 | tee out/test-machine.log
	@$(call summary,test-machine (stock Debian kernel),out/test-machine.log)
endif

kernel:
ifeq ($(NATIVE_KVM),1)
	@echo "kernel: the SME kernel runs in the emulated test machine; not built on a native arm64 KVM host"
else
	@$(KERNEL_BUILD) >/dev/null
endif

# PYVMM_REQUIRE_SME=1: a kernel without the SME ABI fails these tests instead of skipping them.
test-sme-kernel: venv machine guests kernel
ifeq ($(NATIVE_KVM),1)
	@echo "test-sme-kernel: needs the emulated test machine with the project's kernel (x86_64 hosts)"
else
	@mkdir -p out
	files="$(call machine_files,$(SME_MARKERS))"; \
	$(RUN) $(RUN_FLAGS) --kernel "$$($(KERNEL_BUILD))" --env PYVMM_REQUIRE_SME=1 -- \
		$(MACHINE_PYTEST:tests=) -m '$(SME_MARKERS)' $${files:-tests} 2>&1 | tee out/test-sme-kernel.log
	@$(call summary,test-sme-kernel (project SME kernel),out/test-sme-kernel.log)
endif

# The SME suite's ABI, guest-exchange and context-switch stress tests on an nVHE host
test-sme-kernel-nvhe: machine guests kernel
ifeq ($(NATIVE_KVM),1)
	@echo "test-sme-kernel-nvhe: needs the emulated test machine with the project's kernel (x86_64 hosts)"
else
	@mkdir -p out
	$(RUN) $(RUN_FLAGS) --kernel "$$($(KERNEL_BUILD))" --kvm-mode nvhe --env PYVMM_REQUIRE_SME=1 -- \
		python3 -m pytest -p no:cacheprovider -ra -m '$(SME_MARKERS)' $(SME_NVHE_TESTS) \
		2>&1 | tee out/test-sme-kernel-nvhe.log
	@$(call summary,test-sme-kernel-nvhe (project SME kernel, nVHE),out/test-sme-kernel-nvhe.log)
endif

# Results: $(ST_OUT)/<label>.txt, logs $(ST_OUT)/logs-<label>/; the summary line of each run last.
test-selftests: machine kernel
ifeq ($(NATIVE_KVM),1)
	@echo "test-selftests: needs the emulated test machine (x86_64 hosts)"
else
	@mkdir -p $(ST_OUT)
	$(SELFTESTS) --label debian 2>&1 | tee $(ST_OUT)/debian.log
	$(SELFTESTS) --kernel "$$($(KERNEL_BUILD))" --label sme --must-pass $(ST_OUT)/debian.txt \
		2>&1 | tee $(ST_OUT)/sme.log
	$(SELFTESTS) --kvm-mode nvhe --label debian-nvhe 2>&1 | tee $(ST_OUT)/debian-nvhe.log
	$(SELFTESTS) --kernel "$$($(KERNEL_BUILD))" --kvm-mode nvhe --label sme-nvhe \
		--must-pass $(ST_OUT)/debian-nvhe.txt 2>&1 | tee $(ST_OUT)/sme-nvhe.log
	@for l in debian sme debian-nvhe sme-nvhe; do echo "$$l: $$(tail -n1 $(ST_OUT)/$$l.log)"; done
endif

# The KVM part runs as two lanes side by side (ci/lanes; TEST_LANES=1 runs them one after
# the other): the stock suite, and the SME kernel's build, suites and the selftests.
TEST_LANES ?= 2
LANE_STOCK = test-machine
LANE_SME = kernel test-sme-kernel test-sme-kernel-nvhe test-selftests
test: host-deps venv test-host typecheck docs machine guests
ifeq ($(TEST_LANES),1)
	@$(MAKE) --no-print-directory $(LANE_STOCK) $(LANE_SME)
else
	@rc=0; ci/lanes "stock=$(MAKE) --no-print-directory $(LANE_STOCK)" \
		"sme=$(MAKE) --no-print-directory $(LANE_SME)" || rc=$$?; \
	grep -hE '^(test-machine|test-sme-kernel|test-sme-kernel-nvhe) \(|^(debian|sme|debian-nvhe|sme-nvhe): selftests:' \
		out/lanes/stock.log out/lanes/sme.log 2>/dev/null || true; exit $$rc
endif

demo:
	$(RUN) $(RUN_FLAGS) -- pyvmm caps
	@if [ -x guests/linux/demo ]; then guests/linux/demo; fi

bench: machine guests kernel
	$(RUN) $(RUN_FLAGS) -- python3 bench/startup.py
	$(RUN) $(RUN_FLAGS) -- python3 bench/boot.py
	$(RUN) $(RUN_FLAGS) --kernel "$$($(KERNEL_BUILD))" -- python3 bench/sme_state.py
	$(RUN) $(RUN_FLAGS) -- python3 bench/snapshot.py
	$(RUN) $(RUN_FLAGS) -- python3 bench/migration.py
	$(RUN) $(RUN_FLAGS) -- python3 bench/data_planes.py
	$(RUN) $(RUN_FLAGS) -- python3 bench/mmio_exits.py

clean:
	rm -rf $(VENV) out build .pytest_cache .hypothesis *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-cache:
	rm -rf $(PYVMM_CACHE)/qemu-aarch64

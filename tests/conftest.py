"""Test policy for KVM-marked tests.

Tests marked ``kvm`` need a real arm64 /dev/kvm. Elsewhere they are skipped
with the exact reason. Inside the test machine (and wherever
PYVMM_REQUIRE_KVM=1) a missing KVM is a failure, never a skip.
"""
import os
import platform
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/support importable as "support"


def kvm_unavailable_reason():
    machine = platform.machine()
    if machine not in ("aarch64", "arm64"):
        return (f"needs arm64 KVM; this host is {machine} "
                f"(run: ci/qemu-aarch64/run -- python3 -m pytest -m kvm tests)")
    if not os.path.exists("/dev/kvm"):
        return "needs arm64 KVM; /dev/kvm does not exist on this arm64 host"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "needs arm64 KVM; /dev/kvm is not readable and writable by this user"
    return None


REQUIRE_KVM = os.environ.get("PYVMM_REQUIRE_KVM") == "1"


def pytest_collection_modifyitems(config, items):
    reason = kvm_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "kvm" in item.keywords:
            if REQUIRE_KVM:
                item.add_marker(pytest.mark.usefixtures("_kvm_required_but_missing"))
            else:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def _kvm_required_but_missing():
    pytest.fail(f"PYVMM_REQUIRE_KVM=1 but {kvm_unavailable_reason()}")


@pytest.fixture
def kvm():
    from pyvmm.kvm import open_kvm

    k = open_kvm()
    yield k
    k.close()


@pytest.fixture
def fake_syscalls(monkeypatch):
    """Route the fd layer's prepared ioctls (pyvmm._fd.KvmFd.prepare) on the
    fake vCPUs of support.fake_kvm to the fake kernel (pure-logic tests only)."""
    from pyvmm import _fd
    from support.fake_kvm import FAKE_LIBC

    monkeypatch.setattr(_fd, "libc", lambda: FAKE_LIBC)

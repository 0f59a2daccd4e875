"""Request numbers, errors and the CLI's failure behaviour, on any host."""
import errno
import os
import platform
import subprocess
import sys

import pytest

from pyvmm import sme
from pyvmm.errors import HostUnsupported, KvmError, PyvmmError, UsageProblem
from pyvmm.ioctls import REQUESTS

# ABI page §1.
ABI_NUMBERS = {"KVM_ARM_VCPU_FINALIZE": 0x4004AEC2, "KVM_ARM_VCPU_INIT": 0x4020AEAE,
               "KVM_GET_ONE_REG": 0x4010AEAB, "KVM_SET_ONE_REG": 0x4010AEAC,
               "KVM_GET_REG_LIST": 0xC008AEB0}


@pytest.mark.parametrize("name,number", sorted(ABI_NUMBERS.items()))
def test_request_numbers_match_the_abi_page(name, number):
    assert REQUESTS[name].number == number


def test_kvm_error_is_an_oserror_naming_ioctl_target_and_register():
    e = KvmError(errno.EBUSY, "KVM_GET_ONE_REG", "vcpu2", "ZA[3]", hint="turn ZA on first")
    assert isinstance(e, OSError) and isinstance(e, PyvmmError)
    assert e.errno == errno.EBUSY
    text = str(e)
    assert "KVM_GET_ONE_REG" in text and "vcpu2" in text and "ZA[3]" in text
    assert "EBUSY" in text and "turn ZA on first" in text


@pytest.mark.parametrize("bad", ["100", "0", "2176", "abc", "300"])
def test_impossible_vector_lengths_are_usage_errors(bad):
    with pytest.raises(UsageProblem) as info:
        sme.parse_vl(bad)
    assert info.value.exit_status == 2


def test_vl_not_offered_lists_the_offered_ones_and_is_a_runtime_condition():
    with pytest.raises(HostUnsupported) as info:
        sme.choose_vqs([1, 2, 4], 384, "SVE vector length")
    assert "128, 256, 512" in str(info.value)
    assert info.value.exit_status == 1  # a well-formed length this host lacks: not a usage error
    assert sme.choose_vqs([1, 2, 4, 8], 512, "SVE vector length") == [1, 2, 4]


def _pyvmm(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


@pytest.mark.skipif(platform.machine() in ("aarch64", "arm64"), reason="checks the non-arm64 message")
def test_caps_on_a_non_arm64_host_is_one_line_and_exit_1():
    p = _pyvmm("caps")
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "not arm64" in lines[0] and "ci/qemu-aarch64/run" in lines[0]
    assert "Traceback" not in p.stderr


@pytest.mark.skipif(platform.machine() in ("aarch64", "arm64"), reason="checks the non-arm64 message")
def test_debug_adds_the_traceback():
    p = _pyvmm("--debug", "caps")
    assert p.returncode == 1 and "Traceback" in p.stderr


def test_missing_kvm_node_is_one_line(tmp_path):
    p = _pyvmm("caps", "--kvm", str(tmp_path / "nope"))
    assert p.returncode == 1
    assert len(p.stderr.strip().splitlines()) == 1


def test_usage_errors_exit_2():
    assert _pyvmm("caps", "--sme-bit", "999").returncode == 2
    assert _pyvmm("no-such-command").returncode == 2


def test_bad_sme_bit_env_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("PYVMM_SME_BIT", "ten")
    with pytest.raises(UsageProblem):
        sme._env_int("PYVMM_SME_BIT")


def test_help_teaches():
    p = _pyvmm("caps", "--help")
    assert p.returncode == 0 and "--json" in p.stdout and "Examples" in p.stdout

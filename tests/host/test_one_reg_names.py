"""KVM_GET/SET_ONE_REG name the register in a failure, and only then (making a
system register's name builds a table of every encoding: start-up time).
Pure logic: the vCPU's ioctl is replaced by a fake."""
import errno

import pytest

from pyvmm import vcpu as vcpu_mod
from pyvmm.arm64 import regs
from pyvmm.errors import KvmError


def _vcpu(monkeypatch, fail_with=None):
    v = vcpu_mod.Vcpu.__new__(vcpu_mod.Vcpu)
    v.fd, v.target = 7, "vcpu0"

    def ioctl(name, arg=0, reg=None):
        if fail_with:
            raise v.error(name, fail_with, reg)
        return 0
    monkeypatch.setattr(v, "ioctl", ioctl)
    return v


def test_no_register_name_is_made_when_the_ioctl_succeeds(monkeypatch):
    made = []
    name = regs.name
    monkeypatch.setattr(regs, "name", lambda r: made.append(r) or name(r))
    v = _vcpu(monkeypatch)
    assert v.get_reg(regs.MPIDR_EL1) == 0
    v.set_reg(regs.core("PC"), 0x40000000)
    assert made == []


@pytest.mark.parametrize("call", ["get", "set"])
def test_a_failure_names_the_register_with_the_kernels_errno(monkeypatch, call):
    v = _vcpu(monkeypatch, errno.ENOENT)
    with pytest.raises(KvmError) as e:
        v.get_reg(regs.MPIDR_EL1) if call == "get" else v.set_reg(regs.MPIDR_EL1, 1)
    assert e.value.errno == errno.ENOENT
    assert "MPIDR_EL1" in str(e.value) and f"KVM_{call.upper()}_ONE_REG on vcpu0" in str(e.value)

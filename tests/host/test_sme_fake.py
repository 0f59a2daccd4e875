"""The SME fake kernel's own sanity (tests/support/fake_kvm.py): the ABI
rules the other host tests rely on it to enforce."""
import errno as E

import pytest

from pyvmm.arm64 import regs
from pyvmm.errors import KvmError
from support.fake_kvm import FPSR_RESET_SM, PSCI, SME_BIT, SVE, FakeKvm

pytestmark = pytest.mark.usefixtures("fake_syscalls")


# ---- the model's own sanity --------------------------------------------------------

def _vcpu(kvm=None, feats=(PSCI, SVE, SME_BIT)):
    kvm = kvm or FakeKvm()
    v = kvm.create_vm().create_vcpu(0)
    v.arm_vcpu_init(feats)
    v.arm_vcpu_finalize(4)
    return v


def test_fake_za_busy_until_svcr_za():
    v = _vcpu()
    with pytest.raises(KvmError) as ei:
        v.get_one_reg(regs.sme_za_row(0))
    assert ei.value.errno == E.EBUSY and "SVCR.ZA = 0" in str(ei.value)
    v.set_reg(regs.SVCR, 2)
    assert v.get_one_reg(regs.sme_za_row(0)) == bytes(256)


def test_fake_sm_change_side_effects():
    v = _vcpu()
    v.set_one_reg(regs.sve_z(0), b"\x01" * 256)
    v.set_reg(regs.SVCR, 1)
    assert v.get_one_reg(regs.sve_z(0)) == bytes(256)
    assert v.get_reg(regs.core("FPSR")) == FPSR_RESET_SM

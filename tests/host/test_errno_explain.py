"""Every case of the ABI page's errno table (§7) has a hint that says what
happened and what to do, and the hint reaches KvmError through the hook."""
import errno

import pytest

from pyvmm import _fd
from pyvmm.arm64 import errno_explain, regs
from pyvmm.errors import KvmError


@pytest.mark.parametrize("row", errno_explain.TABLE, ids=lambda r: r.situation)
def test_every_row_has_a_hint(row):
    hint = errno_explain.explain(row.ioctl, row.errno, row.reg)
    assert hint, row
    assert len(hint) > 40


def test_za_off_message_is_the_issue_text():
    hint = errno_explain.explain("KVM_GET_ONE_REG", errno.EBUSY, regs.name(regs.sme_za_row(12)))
    assert hint.startswith("ZA is off in this vCPU (SVCR.ZA = 0): ZA and ZT0 exist only while it is on")
    assert errno_explain.explain("KVM_SET_ONE_REG", errno.EBUSY, "ZT0") == hint


@pytest.mark.parametrize("reg, needle", [
    ("ZT0", "SME2"),
    ("Z3", "SME-only"),
    ("P15", "SME-only"),
    ("FFR", "FA64"),
    ("Z3[slice 1]", "slice 0"),
    ("ZA[4][slice 2]", "slice 0"),
])
def test_enoent_distinguishes_the_cause(reg, needle):
    assert needle in errno_explain.explain("KVM_GET_ONE_REG", errno.ENOENT, reg)


@pytest.mark.parametrize("reg, needle", [
    ("ZA[255]", "SVL/8"),
    ("SVCR", "reserved"),
    ("V7", "Zn"),
])
def test_einval_distinguishes_the_cause(reg, needle):
    assert needle in errno_explain.explain("KVM_SET_ONE_REG", errno.EINVAL, reg)


def test_smpri_has_no_userspace_state():
    assert "no userspace state" in errno_explain.explain("KVM_GET_ONE_REG", errno.ENOENT, "SMPRI_EL1")


def test_unknown_sme_id_is_in_the_sme_space_and_named_unknown():
    bad = errno_explain.unknown_sme_id()
    assert regs.coproc_of(bad) == regs.COPROC_SME
    assert regs.decode(bad).kind == "unknown"
    assert "coprocessor 0x17" in errno_explain.explain("KVM_GET_ONE_REG", errno.EINVAL, regs.name(bad))


@pytest.mark.parametrize("reg, err", [("SVE_VLS", errno.ENOENT), ("SME_VLS", errno.EINVAL),
                                      ("SME_VLS", errno.EPERM)])
def test_vls_rows(reg, err):
    hint = errno_explain.explain("KVM_SET_ONE_REG", err, reg)
    assert reg in hint


def test_unrelated_failures_get_no_hint():
    assert errno_explain.explain("KVM_GET_ONE_REG", errno.EBUSY, "X0") is None
    assert errno_explain.explain("KVM_CREATE_VM", errno.EINVAL, None) is None
    assert errno_explain.explain("KVM_SET_ONE_REG", errno.EINVAL, "SCTLR_EL1") is None


def test_every_kvm_error_from_the_fd_layer_carries_the_hint():
    # No registration step: the fd layer asks the explainer itself.
    e = _fd.KvmFd(-1).error("KVM_GET_ONE_REG", errno.EBUSY, "ZA[0]")
    assert isinstance(e, KvmError)
    assert "SVCR.ZA = 0" in str(e)
    assert e.errno == errno.EBUSY
    assert _fd.KvmFd(-1).error("KVM_GET_ONE_REG", errno.EBUSY, "X0").hint is None

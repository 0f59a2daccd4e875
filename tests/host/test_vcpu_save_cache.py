"""vcpu_state.save with a cache (a live migration's second save, in the
pause): the register list is read again only when SVCR changed
(docs/kvm-sme-abi.md §5-6), registers only userspace can change are not
read again, and what it returns equals a save without the cache. On the
fake KVM of support.fake_kvm (pure logic, no KVM)."""
import pytest

from pyvmm.arm64 import regs
from pyvmm.snapshot import vcpu_state
from support.fake_kvm import PSCI, SME_BIT, SVE, FakeKvm

pytestmark = pytest.mark.usefixtures("fake_syscalls")  # FakeKvm vCPUs go through the fd layer
FEATURES = [PSCI, SVE, SME_BIT]


def _vcpu():
    v = FakeKvm().create_vm().create_vcpu(0)
    v.arm_vcpu_init(FEATURES)
    v.arm_vcpu_finalize(4)
    v.get_mp_state = lambda: 0
    v.get_vcpu_events = lambda: bytes(64)
    lists = []
    real = v.get_reg_list
    v.get_reg_list = lambda: lists.append(1) or real()
    return v, lists


def _same(a, b):
    return (a.svcr, a.registers, a.sve_vls, a.sme_vls) == (b.svcr, b.registers, b.sve_vls, b.sme_vls)


def test_a_second_save_reuses_the_register_list_and_reads_changed_values():
    v, lists = _vcpu()
    cache = {}
    first = vcpu_state.save(v, FEATURES, SME_BIT, cache)
    v.set_reg(regs.core("FPCR"), 0x1234)  # the guest ran meanwhile
    second = vcpu_state.save(v, FEATURES, SME_BIT, cache)
    assert len(lists) == 1
    assert second.register_map()[regs.core("FPCR")] == (0x1234).to_bytes(4, "little")
    assert first.register_map()[regs.core("FPCR")] != second.register_map()[regs.core("FPCR")]
    assert _same(second, vcpu_state.save(v, FEATURES, SME_BIT))


def test_a_changed_svcr_reads_the_list_again_za_rows_included():
    v, lists = _vcpu()
    cache = {}
    first = vcpu_state.save(v, FEATURES, SME_BIT, cache)
    assert not any(regs.decode(i).kind == "sme_za" for i, _ in first.registers)
    v.set_reg(regs.SVCR, 2)  # ZA on: ZA rows appear in the list (§5)
    second = vcpu_state.save(v, FEATURES, SME_BIT, cache)
    assert len(lists) == 2 and second.svcr == 2
    assert any(regs.decode(i).kind == "sme_za" for i, _ in second.registers)
    assert _same(second, vcpu_state.save(v, FEATURES, SME_BIT))
    v.set_reg(regs.SVCR, 0)  # back to the first list: known again, not read
    third = vcpu_state.save(v, FEATURES, SME_BIT, cache)
    assert len(lists) == 3  # the uncached save above read it once
    assert _same(third, vcpu_state.save(v, FEATURES, SME_BIT))


@pytest.mark.parametrize("reg_id,fixed", [
    (regs.demux_ccsidr(0), True), (regs.fw_feat_bmap(0), True), (regs.FW_PSCI_VERSION, True),
    (regs.ID_AA64PFR1_EL1, True), (regs.SVE_VLS, True), (regs.SME_VLS, True),
    (regs.fw(1), False), (regs.fw(2), False),  # SMCCC_ARCH_WORKAROUND_1/2: the second guest-switchable once
    (regs.SVCR, False), (regs.core("X0"), False), (regs.sysreg_named("TPIDR_EL1"), False),
])
def test_fixed_by_userspace(reg_id, fixed):
    assert vcpu_state.fixed_by_userspace(reg_id) is fixed


def test_psci_version_id():
    assert regs.FW_PSCI_VERSION == regs.fw(0) == 0x6030000000140000
    assert regs.name(regs.FW_PSCI_VERSION) == "PSCI_VERSION"


def test_the_blob_read_as_it_is_equals_the_state_s_own():
    v, _ = _vcpu()
    cache = {}
    for svcr in (0, 2, 3):
        v.set_reg(regs.SVCR, svcr)
        v.set_reg(regs.core("FPCR"), 0x100 + svcr)
        state, blob = vcpu_state.save_with_blob(v, FEATURES, SME_BIT, cache)
        assert blob == state.registers_blob()
        assert regs.SVE_VLS not in state.register_map() and state.sve_vls and state.sme_vls
        assert vcpu_state.VcpuState.from_json(state.to_json(), blob).registers == state.registers

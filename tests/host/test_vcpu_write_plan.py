"""vcpu_state.WritePlan: the restore split into a fixed half (ID registers,
FINALIZE) and the rest (one prepared batch), as a live migration's
destination uses it. A recording fake vCPU (pure logic, no KVM)."""
import errno

import pytest

from pyvmm.arm64 import regs
from pyvmm.errors import KvmError, UsageProblem
from pyvmm.snapshot import vcpu_state


class RecordingVcpu:
    """Fake vCPU: records ONE_REG writes, FINALIZE, events and MP state in order."""

    def __init__(self, values=None, unreadable=()):
        self.log = []
        self.values = dict(values or {})  # what the fake's registers hold (reads; writes change it)
        self.unreadable = set(unreadable)  # ids whose read fails as KVM's would (ENOENT)

    def set_one_reg(self, reg_id, value):
        self.log.append(("set", reg_id, bytes(value)))
        self.values[reg_id] = bytes(value)

    def arm_vcpu_finalize(self, what):
        self.log.append(("finalize",))

    def set_vcpu_events(self, events, inject=True):
        self.log.append(("events", events) if inject else ("events-no-injection", events))

    def set_mp_state(self, state):
        self.log.append(("mp", state))

    def one_reg_batch(self, ids):
        vcpu, ids = self, list(ids)

        class Batch:
            sizes = [regs.size_of(i) for i in ids]

            def set_all(self, values):
                for i, v in zip(ids, values):
                    vcpu.set_one_reg(i, v)

            def set_some(self, positions, values):
                for k, v in zip(positions, values):
                    vcpu.set_one_reg(ids[k], v)

            def get_all(self, lengths):
                if vcpu.unreadable & set(ids):
                    raise KvmError(errno.ENOENT, "KVM_GET_ONE_REG", "vcpu0")
                return [vcpu.values.get(i, bytes(n)) for i, n in zip(ids, lengths)]
        return Batch()


IDS = [regs.ID_AA64PFR1_EL1, regs.MPIDR_EL1, regs.core("X0"), regs.core("FPSR"), regs.sve_z(0),
       regs.sme_za_row(0), regs.SVCR, regs.sysreg_named("TPIDR_EL1")]


def _state(svcr=0, pfr1=0, x0=7):
    values = {i: bytes(regs.size_of(i)) for i in IDS}
    values[regs.ID_AA64PFR1_EL1] = pfr1.to_bytes(8, "little")
    values[regs.core("X0")] = x0.to_bytes(8, "little")
    return vcpu_state.VcpuState(0, [2, 4, 10], [1], [1, 2], svcr, list(values.items()), mp_state=0, events=b"e")


def test_the_fixed_half_writes_id_registers_and_finalizes_and_the_rest_the_others():
    v = RecordingVcpu()
    plan = vcpu_state.WritePlan(v, _state(), sme_bit=10)
    plan.write_fixed(v, _state())
    written = [e[1] for e in v.log if e[0] == "set"]
    assert regs.ID_AA64PFR1_EL1 in written and regs.core("X0") not in written
    assert v.log[-1] == ("finalize",)
    v.log.clear()
    later = _state(x0=9)  # the same vCPU later: same registers and SVCR
    assert plan.fits(later) and plan.fixed_key(later) == plan.fixed
    plan.write_rest(v, later)
    sets = [(e[1], e[2]) for e in v.log if e[0] == "set"]
    order = [i for i, _ in sets]
    assert regs.ID_AA64PFR1_EL1 not in order
    assert order.index(regs.SVCR) < order.index(regs.core("FPSR")) < order.index(regs.sve_z(0))
    assert dict(sets)[regs.core("X0")] == (9).to_bytes(8, "little")
    assert regs.sme_za_row(0) not in order  # SVCR.ZA = 0: ZA is never written
    assert v.log[-2:] == [("events", b"e"), ("mp", 0)]


def test_a_later_state_with_other_svcr_or_id_registers_does_not_fit():
    v = RecordingVcpu()
    plan = vcpu_state.WritePlan(v, _state(), sme_bit=10)
    assert not plan.fits(_state(svcr=2))
    with pytest.raises(ValueError, match="does not fit"):
        plan.write_rest(v, _state(svcr=2))
    assert plan.fixed_key(_state(pfr1=1 << 24)) != plan.fixed


def test_a_value_of_the_wrong_size_is_refused_before_any_write():
    v = RecordingVcpu()
    st = _state()
    plan = vcpu_state.WritePlan(v, st, sme_bit=10)
    st.registers = [(i, b"\1" if i == regs.core("X0") else val) for i, val in st.registers]
    with pytest.raises(UsageProblem, match="X0 takes 8 bytes, got 1"):
        plan.write_rest(v, st)
    assert v.log == []


def test_the_plan_layout_decodes_a_later_blob_as_the_general_reader_does():
    st = _state(x0=9)
    plan = vcpu_state.WritePlan(RecordingVcpu(), _state(), sme_bit=10)
    meta, blob = st.to_json(), st.registers_blob()
    fast = vcpu_state.VcpuState.from_json(meta, blob, plan.layout)
    assert fast == vcpu_state.VcpuState.from_json(meta, blob) and fast.registers == st.registers
    assert plan.layout.decode(blob[:-1]) is None  # another length: the general reader decides
    other = vcpu_state.VcpuState(0, [2, 4, 10], [1], [1, 2], 0, list(reversed(st.registers)), mp_state=0, events=b"e")
    assert plan.layout.decode(other.registers_blob()) is None  # other ids or order
    back = vcpu_state.VcpuState.from_json(other.to_json(), other.registers_blob(), plan.layout)
    assert back.registers == other.registers and not plan.fits(back)
    with pytest.raises(ValueError, match="ends inside"):
        vcpu_state.VcpuState.from_json(meta, blob[:-1], plan.layout)


def _sets(v):
    return [(e[1], e[2]) for e in v.log if e[0] == "set"]


def test_after_read_current_only_registers_whose_value_differs_are_written_in_plan_order():
    st = _state(x0=9)
    fresh = dict(_state(x0=0).registers)
    fresh[regs.core("FPSR")] = (1).to_bytes(4, "little")  # differs from the state's 0
    v = RecordingVcpu(fresh)
    plan = vcpu_state.WritePlan(v, st, sme_bit=10)
    assert plan.read_current()
    plan.write_rest(v, st)
    changed = (regs.core("FPSR"), regs.core("X0"))
    assert [i for i, _ in _sets(v)] == [i for i in plan.rest_ids if i in changed]
    assert dict(_sets(v)) == {regs.core("FPSR"): bytes(4), regs.core("X0"): (9).to_bytes(8, "little")}
    assert plan.written == 2 and v.log[-2:] == [("events", b"e"), ("mp", 0)]
    v.log.clear()
    plan.write_rest(v, st)  # the values read are good for one write: now everything
    assert plan.written == len(plan.rest_ids) == len(_sets(v))


def test_a_changed_svcr_or_an_unreadable_register_writes_everything():
    st = _state(x0=9)
    for fresh, unreadable in (({regs.SVCR: (1).to_bytes(8, "little")}, ()), ({}, (regs.core("X0"),))):
        v = RecordingVcpu({**dict(st.registers), **fresh}, unreadable)
        plan = vcpu_state.WritePlan(v, st, sme_bit=10)
        assert plan.read_current() == (not unreadable)
        plan.write_rest(v, st)
        assert [i for i, _ in _sets(v)] == plan.rest_ids and plan.written == len(plan.rest_ids)


def test_a_check_load_injects_no_event_and_timers_off_disables_only_the_timers_it_has():
    st = _state()
    v = RecordingVcpu()
    plan = vcpu_state.WritePlan(v, st, sme_bit=10)
    plan.write_rest(v, st, inject=False)
    assert v.log[-2:] == [("events-no-injection", b"e"), ("mp", 0)]
    v.log.clear()
    plan.timers_off(v)
    assert v.log == []  # this state has no timer registers
    values = dict(st.registers)
    values[regs.TIMER_CTLS[0]] = (5).to_bytes(8, "little")  # CNTV_CTL_EL0: enabled, firing
    timed = vcpu_state.VcpuState(0, [2, 4, 10], [1], [1, 2], 0, list(values.items()), mp_state=0, events=b"e")
    plan = vcpu_state.WritePlan(v, timed, sme_bit=10)
    plan.timers_off(v)
    assert v.log == [("set", regs.TIMER_CTLS[0], bytes(8))]

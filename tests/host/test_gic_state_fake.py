"""vGICv3 save/restore logic without KVM: attr encodings, the dict's shape,
restore order and the refusals. The device is support.fake_vgic's recording
stand-in for the KVM device fd (pure logic only; tests/kvm/test_gic_state.py
runs the same code against the real in-kernel vGIC)."""
import errno
import json

import pytest

from pyvmm.machine import gic, gic_regs
from pyvmm.arm64 import regs
from pyvmm._ffi import const
from pyvmm.errors import HostUnsupported, KvmError, UsageProblem
from support.fake_kvm import FakeKvm
from support.fake_vgic import FakeVgicDevice

DIST = const("KVM_DEV_ARM_VGIC_GRP_DIST_REGS")
REDIST = const("KVM_DEV_ARM_VGIC_GRP_REDIST_REGS")
SYSREGS = const("KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS")
LEVEL = const("KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO")
NR_IRQS_GRP = const("KVM_DEV_ARM_VGIC_GRP_NR_IRQS")

MPIDRS = [0x8000_0000, 0x8000_0001]


def _gic(ncpus=2, nr_irqs=None, busy=False, **kw):
    dev = FakeVgicDevice(**kw)
    vgic = gic.VgicV3(FakeKvm(vgic=dev).create_vm(), ncpus)
    assert dev.nr_irqs == gic_regs.NR_IRQS
    if nr_irqs is not None:
        dev.nr_irqs = nr_irqs  # as if the vGIC had been sized differently
    dev.busy = busy
    return vgic, dev


# -- attr encodings ------------------------------------------------------------------
def test_mpidr_affinity_moves_aff3_next_to_aff2():
    mpidr = (0x44 << 32) | 0x8000_0000 | 0x33_22_11
    assert gic_regs.mpidr_affinity(mpidr) == 0x44_33_22_11
    assert gic_regs.mpidr_affinity(0x8000_0001) == 1  # RES1 bit 31 and U/MT are not affinity


def test_redist_and_level_attrs_carry_the_affinity_in_the_upper_word():
    m = (0x44 << 32) | 0x33_22_11
    assert gic_regs.redist_attr(m, gic_regs.GICR_ISPENDR0) == (0x44332211 << 32) | 0x10200
    assert gic_regs.dist_attr(gic_regs.GICD_IROUTER + 8 * 40) == 0x6140
    assert gic_regs.line_level_attr(0x8000_0001, 64) == (1 << 32) | (0 << 10) | 64
    with pytest.raises(ValueError):
        gic_regs.line_level_attr(0, 40)
    with pytest.raises(ValueError):
        gic_regs.line_level_attr(0, 1024)


def test_sysreg_instr_is_the_low_16_bits_of_the_one_reg_sysreg_id():
    for name, enc in gic_regs.ICC_SYSREGS.items():
        assert gic_regs.sysreg_instr(name) == regs.sysreg(*enc) & 0xFFFF, name
    assert gic_regs.sysreg_instr("ICC_PMR_EL1") == 0xC230
    assert gic_regs.sysreg_instr("ICC_IGRPEN1_EL1") == 0xC667
    assert gic_regs.sysreg_attr(0x8000_0001, "ICC_CTLR_EL1") == (1 << 32) | 0xC664


@pytest.mark.parametrize("pri_bits,n", [(5, 1), (6, 2), (7, 4), (4, 1)])
def test_apr_count_follows_icc_ctlr_pribits(pri_bits, n):
    assert gic_regs.apr_count(((pri_bits - 1) << 8) | (1 << 11) | 2) == n  # IDbits, CBPR set too


# -- save ---------------------------------------------------------------------------
def test_save_is_json_serialisable_and_sized_by_nr_irqs():
    g, dev = _gic()
    state = g.save(MPIDRS)
    assert json.loads(json.dumps(state)) == state
    assert state["format"] == gic_regs.STATE_FORMAT
    assert (state["nr_irqs"], state["nr_vcpus"], state["mpidrs"]) == (128, 2, MPIDRS)
    d = state["dist"]
    assert [len(d[n]) for n in ("IGROUPR", "ISENABLER", "ISPENDR", "ISACTIVER", "IGRPMODR")] == [3] * 5
    assert len(d["IPRIORITYR"]) == 24 and len(d["ICFGR"]) == 6 and len(d["IROUTER"]) == 96
    assert len(state["line_level"]) == 3
    r = state["redist"][1]
    assert len(r["IPRIORITYR"]) == 8 and len(r["ICFGR"]) == 2
    c = state["cpu"][0]
    assert len(c["ICC_AP0R"]) == len(c["ICC_AP1R"]) == 1
    # IROUTER of INTID 32 is read as two 32-bit halves at 0x6100 and 0x6104.
    lo, hi = dev.values.get((DIST, 0x6100), dev._seed(DIST, 0x6100)), dev._seed(DIST, 0x6104)
    assert d["IROUTER"][0] == lo | (hi << 32)
    # Each redistributor is addressed by its vCPU's affinity.
    reads = {(g_, a >> 32) for op, g_, a, _ in dev.log if op == "get" and g_ in (REDIST, SYSREGS)}
    assert reads >= {(REDIST, 0), (REDIST, 1), (SYSREGS, 0), (SYSREGS, 1)}


def test_save_reads_seven_bit_priority_aprs():
    g, _ = _gic(icc_ctlr=6 << 8)
    assert len(g.save(MPIDRS)["cpu"][1]["ICC_AP1R"]) == 4


def test_save_needs_one_mpidr_per_vcpu():
    g, _ = _gic()
    with pytest.raises(UsageProblem, match="1 MPIDRs given for a vGIC with 2 vCPUs"):
        g.save(MPIDRS[:1])


def test_busy_vcpu_is_a_usage_problem_naming_kvm_run():
    g, _ = _gic(busy=True)
    with pytest.raises(UsageProblem) as info:
        g.save(MPIDRS)
    assert "inside KVM_RUN" in info.value.message and "\n" not in str(info.value)


# -- restore ----------------------------------------------------------------------------
def _restored():
    src, _ = _gic()
    state = src.save(MPIDRS)
    dst, dev = _gic()
    dev.log.clear()
    dst.restore(json.loads(json.dumps(state)), MPIDRS)
    return state, dst, dev


def test_restore_then_save_gives_the_same_state():
    state, dst, _ = _restored()
    assert dst.save(MPIDRS) == state


def test_restore_order_follows_the_kernel_rules():
    state, _, dev = _restored()
    w = dev.writes()
    idx = {}
    for i, (g_, a, _v) in enumerate(w):
        idx.setdefault((g_, a), []).append(i)
    first = lambda g_, a: idx[(g_, a)][0]  # noqa: E731

    assert w[0][:2] == (DIST, gic_regs.GICD_IIDR)  # IIDR before anything else
    # the distributor enable right after IIDR: pending state written while it is off is never queued
    assert w[1][:2] == (DIST, gic_regs.GICD_CTLR)
    # ICPENDR is RAZ/WI from userspace: never written.
    assert not [x for x in w if x[0] == DIST and gic_regs.GICD_ICPENDR <= x[1] < gic_regs.GICD_ICPENDR + 0x80]
    assert not [x for x in w if x[0] == REDIST and x[1] & 0xFFFFFFFF == gic_regs.GICR_ICPENDR0]
    # SPI 32..63: route, config, priority, line level before the pending latch.
    spend = first(DIST, gic_regs.GICD_ISPENDR + 4)
    for off in (gic_regs.GICD_IROUTER + 8 * 32, gic_regs.GICD_ICFGR + 8, gic_regs.GICD_IPRIORITYR + 32, gic_regs.GICD_IGROUPR + 4):
        assert first(DIST, off) < spend, hex(off)
    assert first(LEVEL, gic_regs.line_level_attr(MPIDRS[0], 32)) < spend
    # Enable/active: clear the complement, then set.
    ce, se = first(DIST, gic_regs.GICD_ICENABLER + 4), first(DIST, gic_regs.GICD_ISENABLER + 4)
    assert ce < se and w[ce][2] == ~state["dist"]["ISENABLER"][0] & 0xFFFFFFFF
    assert w[se][2] == state["dist"]["ISENABLER"][0]
    # Redistributor of vCPU 1: config before pending, pending latch as saved.
    m1 = gic_regs.mpidr_affinity(MPIDRS[1]) << 32
    rp = first(REDIST, m1 | gic_regs.GICR_ISPENDR0)
    assert first(REDIST, m1 | (gic_regs.GICR_ICFGR0 + 4)) < rp
    assert w[rp][2] == state["redist"][1]["ISPENDR0"][0]
    # CPU interface: SRE, then CTLR before the APRs and BPR1.
    sysw = [a & 0xFFFF for g_, a, _ in w if g_ == SYSREGS and a >> 32 == 1]
    assert sysw[0] == gic_regs.sysreg_instr("ICC_SRE_EL1")
    ctlr = sysw.index(gic_regs.sysreg_instr("ICC_CTLR_EL1"))
    assert ctlr < sysw.index(gic_regs.sysreg_instr("ICC_BPR1_EL1"))
    assert ctlr < sysw.index(gic_regs.sysreg_instr("ICC_AP0R0_EL1"))
    assert gic_regs.sysreg_instr("ICC_AP0R1_EL1") not in sysw  # 5 priority bits: one APR


def test_preset_config_then_restore_writes_only_the_changed_configuration():
    src, _ = _gic()
    first = json.loads(json.dumps(src.save(MPIDRS)))
    final = json.loads(json.dumps(first))
    final["dist"]["IROUTER"][3] = 1  # SPI 35 routed to vCPU 1 since
    final["dist"]["ISENABLER"][0] ^= 1 << 3
    plain, plain_dev = _gic()
    plain_dev.log.clear()
    plain.restore(json.loads(json.dumps(final)), MPIDRS)
    dst, dev = _gic()
    dst.preset_config(first, MPIDRS)
    preset = dev.writes()
    assert preset[0][:2] == (DIST, gic_regs.GICD_IIDR)
    assert (DIST, gic_regs.GICD_IROUTER + 8 * 35, first["dist"]["IROUTER"][3] & 0xFFFFFFFF) in preset
    assert not [x for x in preset if x[1] in (gic_regs.GICD_CTLR, gic_regs.GICD_ISENABLER)]
    dev.log.clear()
    dst.restore(final, MPIDRS)
    config = [x for x in dev.writes() if x[0] == DIST and (gic_regs.GICD_IROUTER <= x[1] < gic_regs.GICD_IROUTER + 0x2000
                                                         or gic_regs.GICD_IPRIORITYR <= x[1] < gic_regs.GICD_IPRIORITYR + 0x400)]
    # only the route that changed (its two 32-bit halves, or the one that differs)
    assert config and {a for _g, a, _v in config} <= {gic_regs.GICD_IROUTER + 8 * 35, gic_regs.GICD_IROUTER + 8 * 35 + 4}
    assert dst.save(MPIDRS) == plain.save(MPIDRS) == final
    # every other register too: a write of the value it holds (read by the preset) is skipped,
    # a set/clear pair whose set register holds the value as well
    assert len(dev.writes()) < len(plain_dev.writes()) // 2
    enable = [x for x in dev.writes() if x[0] == DIST and x[1] in (gic_regs.GICD_ISENABLER + 4, gic_regs.GICD_ICENABLER + 4)]
    assert len(enable) == 2  # the changed enable word (SPIs 32..63): its pair
    dev.log.clear()
    dst.restore(first, MPIDRS)  # the preset is used once: a second restore writes everything
    assert (DIST, gic_regs.GICD_IROUTER + 8 * 36, first["dist"]["IROUTER"][4] & 0xFFFFFFFF) in dev.writes()


def test_a_restored_vgic_that_learned_its_registers_writes_only_what_changed():
    src, _ = _gic()
    first = json.loads(json.dumps(src.save(MPIDRS)))
    final = json.loads(json.dumps(first))
    final["dist"]["IROUTER"][3] = 1
    final["dist"]["ISENABLER"][0] ^= 1 << 3
    dst, dev = _gic()
    dst.restore(json.loads(json.dumps(first)), MPIDRS)
    dev.log.clear()
    dst.learn_current(MPIDRS)
    assert dev.writes() == []  # reads only
    dst.restore(final, MPIDRS)
    w = dev.writes()
    enable = [x for x in w if x[0] == DIST and x[1] in (gic_regs.GICD_ISENABLER + 4, gic_regs.GICD_ICENABLER + 4)]
    assert len(enable) == 2 and (DIST, gic_regs.GICD_IROUTER + 8 * 35, 1) in w
    # the route (the halves that differ) and the enable pair; nothing else differs
    assert {a for _g, a, _v in w} <= {gic_regs.GICD_IROUTER + 8 * 35, gic_regs.GICD_IROUTER + 8 * 35 + 4,
                                      gic_regs.GICD_ISENABLER + 4, gic_regs.GICD_ICENABLER + 4}, w
    assert dst.save(MPIDRS) == final


def test_a_learned_restore_skips_unchanged_parts_whole_and_writes_a_change_in_any_part():
    # learn_current()'s state lets restore skip a redistributor, a CPU
    # interface or a distributor bank equal to it whole: a change in one
    # of them (here vCPU 1's ICC_PMR_EL1, vCPU 0's SGI enables and the SPI
    # line levels) is still written, and only it.
    src, _ = _gic()
    first = json.loads(json.dumps(src.save(MPIDRS)))
    final = json.loads(json.dumps(first))
    final["cpu"][1]["ICC_PMR_EL1"] ^= 0x80
    final["redist"][0]["ISENABLER0"][0] ^= 1 << 2
    final["line_level"][1] ^= 1 << 4
    dst, dev = _gic()
    dst.restore(json.loads(json.dumps(first)), MPIDRS)
    dst.learn_current(MPIDRS)
    dev.log.clear()
    dst.restore(final, MPIDRS)
    w = dev.writes()
    assert (SYSREGS, gic_regs.sysreg_attr(MPIDRS[1], "ICC_PMR_EL1"), final["cpu"][1]["ICC_PMR_EL1"]) in w
    assert {(g, a) for g, a, _v in w} == {
        (SYSREGS, gic_regs.sysreg_attr(MPIDRS[1], "ICC_PMR_EL1")),
        (REDIST, gic_regs.redist_attr(MPIDRS[0], gic_regs.GICR_ISENABLER0)),
        (REDIST, gic_regs.redist_attr(MPIDRS[0], gic_regs.GICR_ICENABLER0)),
        (LEVEL, gic_regs.line_level_attr(MPIDRS[0], 64))}, w
    assert dst.save(MPIDRS) == final


def _route_accesses(dev, op):
    return [a for o, g, a, _v in dev.log if o == op and g == DIST
            and gic_regs.GICD_IROUTER <= a < gic_regs.GICD_IROUTER + 0x2000]


def test_without_aff3_only_the_lower_half_of_each_route_is_read_and_written():
    src, sdev = _gic()  # GICD_TYPER.A3V clear, as KVM's
    sdev.log.clear()
    state = src.save(MPIDRS)
    reads = _route_accesses(sdev, "get")
    assert len(reads) == 96 and all(a % 8 == 0 for a in reads)  # one per SPI, no upper half
    assert all(r >> 32 == 0 for r in state["dist"]["IROUTER"])
    dst, dev = _gic()
    dev.log.clear()
    dst.restore(json.loads(json.dumps(state)), MPIDRS)
    assert len(_route_accesses(dev, "set")) == 96 and dst.save(MPIDRS) == state
    # a state of the old format (both halves read: the upper one 0) is the same state, restored the same way
    # and one whose upper half is set (read where Aff3 exists) still has it written (the vGIC ignores it)
    odd = json.loads(json.dumps(state))
    odd["dist"]["IROUTER"][0] |= 1 << 32
    dev.log.clear()
    dst.restore(odd, MPIDRS)
    assert gic_regs.GICD_IROUTER + 8 * 32 + 4 in _route_accesses(dev, "set")


def test_with_aff3_both_halves_of_each_route_are_read_and_written():
    src, sdev = _gic(a3v=True)
    sdev.log.clear()
    state = src.save(MPIDRS)
    assert len(_route_accesses(sdev, "get")) == 192
    dst, dev = _gic(a3v=True)
    dev.log.clear()
    dst.restore(json.loads(json.dumps(state)), MPIDRS)
    assert len(_route_accesses(dev, "set")) == 192 and dst.save(MPIDRS) == state


def _refusal(mutate, nr_irqs=128, ncpus=2, mpidrs=MPIDRS):
    src, _ = _gic()
    state = json.loads(json.dumps(src.save(MPIDRS)))
    mutate(state)
    dst, dev = _gic(ncpus=ncpus, nr_irqs=nr_irqs)
    dev.log.clear()
    with pytest.raises(UsageProblem) as info:
        dst.restore(state, mpidrs)
    assert dev.writes() == []  # refused before writing anything
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_restore_refuses_a_different_nr_irqs():
    assert "saved with NR_IRQS 128, this vGIC has 256" in _refusal(lambda s: None, nr_irqs=256)


def test_restore_refuses_a_different_vcpu_count():
    msg = _refusal(lambda s: None, ncpus=3, mpidrs=MPIDRS + [0x8000_0002])
    assert "saved with 2 vCPUs, this VM has 3" in msg


def test_restore_refuses_missing_keys():
    assert "vGIC state lacks 'cpu'" in _refusal(lambda s: s.pop("cpu"))
    assert "vGIC redist[1] state lacks 'ISPENDR0'" in _refusal(lambda s: s["redist"][1].pop("ISPENDR0"))
    assert "vGIC dist state lacks 'IROUTER'" in _refusal(lambda s: s["dist"].pop("IROUTER"))


def test_restore_refuses_unknown_keys_and_newer_versions():
    assert "vGIC cpu[0] state has unknown fields 'ICC_X'" in _refusal(lambda s: s["cpu"][0].__setitem__("ICC_X", 1))
    assert "vGIC state is version 2, this pyvmm reads up to 1" in _refusal(lambda s: s.__setitem__("version", 2))


def test_restore_refuses_malformed_values():
    assert "vGIC dist state: 'IPRIORITYR' has 23 entries, expected 24" in _refusal(
        lambda s: s["dist"]["IPRIORITYR"].pop())
    assert "line_level[0] must be a 32-bit unsigned integer" in _refusal(
        lambda s: s["line_level"].__setitem__(0, 1 << 32))
    assert "vGIC cpu[0] state: 'ICC_PMR_EL1' must be an integer" in _refusal(
        lambda s: s["cpu"][0].__setitem__("ICC_PMR_EL1", "0xf0"))
    assert "format is 'other'" in _refusal(lambda s: s.__setitem__("format", "other"))
    assert "vGIC dist state is not a JSON object (got list)" in _refusal(lambda s: s.__setitem__("dist", []))
    # APR count must match the saved PRIbits.
    assert "vGIC cpu[1] state: 'ICC_AP0R' has 1 entries, expected 4" in _refusal(
        lambda s: s["cpu"][1].__setitem__("ICC_CTLR_EL1", 6 << 8))


def test_restore_refuses_other_mpidrs():
    msg = _refusal(lambda s: None, mpidrs=[0x8000_0000, 0x8000_0100])
    assert "vCPU 1 has MPIDR 0x80000100 but the state was saved with 0x80000001" in msg
    assert "restore the vCPUs' MPIDR_EL1 first" in msg


def test_restore_refuses_a_non_dict():
    dst, _ = _gic()
    with pytest.raises(UsageProblem, match="vGIC state is not a JSON object"):
        dst.restore([], MPIDRS)


def test_restore_turns_an_iidr_the_host_lacks_into_a_host_refusal():
    src, _ = _gic()
    state = src.save(MPIDRS)
    dst, dev = _gic()

    def refuse(group, attr, value=None, ctype="uint64_t"):
        raise KvmError(errno.EINVAL, "KVM_SET_DEVICE_ATTR", "vgic-v3")

    dev.set_device_attr = refuse
    with pytest.raises(HostUnsupported, match="does not implement the saved GICD_IIDR"):
        dst.restore(state, MPIDRS)

"""The order in which a saved vector (SVE/SME) state must be written back.

One function, :func:`plan`, computes the order that
docs/kvm-sme-abi.md §6 forces, from the *saved* SVCR and the saved
vCPU configuration -- never from the destination's register list: a fresh
vCPU has SVCR = 0, so its list has no ZA rows and shows the wrong Z/P/FFR
set, and KVM_GET_REG_LIST puts SVCR *after* the vector registers (§6), so
restoring in list order writes data that the later SVCR write then zeroes.

Every step carries the reason it is where it is; :meth:`Plan.explain` prints
them (``pyvmm restore-plan --explain``). Pure: no KVM here.
"""
from __future__ import annotations

from .._record import field, record
from typing import List, Sequence, Tuple

from . import regs
from .vec import CONFIGS, KVM_ARM_VCPU_SVE, SVCR_SM, SVCR_ZA, VecShape  # noqa: F401 (CONFIGS: for callers)
from ..errors import UsageProblem


@record(frozen=True)
class Step:
    """One step. ``action`` is ``init`` (KVM_ARM_VCPU_INIT with ``features``),
    ``set`` (KVM_SET_ONE_REG of each id in ``ids``, in order) or ``finalize``
    (KVM_ARM_VCPU_FINALIZE(4))."""
    number: int
    action: str
    title: str
    reason: str
    ids: Tuple[int, ...] = ()
    features: Tuple[int, ...] = ()
    section: str = ""


@record(frozen=True)
class Plan:
    shape: VecShape
    fresh: bool
    steps: Tuple[Step, ...] = field(default_factory=tuple)

    def ids(self) -> List[int]:
        """Every register id written, in plan order."""
        return [i for s in self.steps if s.action == "set" for i in s.ids]

    def explain(self, reasons: bool = True) -> str:
        lines = [describe(self.shape) + ("" if self.fresh else "; into an already finalised vCPU")]
        for s in self.steps:
            lines.append(f"{s.number:2d}. {s.title}")
            if reasons:
                lines.append(f"    why: {s.reason}" + (f" ({s.section})" if s.section else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "shape": describe(self.shape),
            "fresh": self.fresh,
            "steps": [{"number": s.number, "action": s.action, "title": s.title,
                       "registers": [regs.name(i) for i in s.ids],
                       "features": list(s.features), "reason": s.reason, "section": s.section}
                      for s in self.steps],
        }


def describe(shape: VecShape) -> str:
    parts = [f"vCPU with {shape.config.upper()}",
             f"saved SVCR = {shape.svcr:#x} (SM={int(shape.sm)}, ZA={int(shape.za)})"]
    if shape.sve:
        parts.append(f"SVE VL {shape.sve_vl_bits} bits")
    if shape.sme:
        parts.append(f"SVL {shape.svl_bits} bits")
        parts.append("FA64" if shape.fa64 else "no FA64")
        parts.append("SME2" if shape.sme2 else "SME1 (no ZT0)")
    return ", ".join(parts)


def name_ranges(ids: Sequence[int]) -> str:
    """``Z0-Z31, P0-P15, FFR``: consecutive numbered names folded into ranges."""
    import re

    out: List[str] = []
    run: List[Tuple[str, int, str]] = []

    def flush():
        if not run:
            return
        pre, first, post = run[0]
        last = run[-1][1]
        out.append(f"{pre}{first}{post}" if first == last else f"{pre}{first}{post}-{pre}{last}{post}")
        run.clear()

    for i in ids:
        n = regs.name(i)
        m = re.fullmatch(r"([A-Z]+\[?)(\d+)(\]?)", n)
        if m and not n.startswith("UNKNOWN"):
            pre, num, post = m[1], int(m[2]), m[3]
            if run and run[-1][0] == pre and run[-1][2] == post and run[-1][1] + 1 == num:
                run.append((pre, num, post))
                continue
            flush()
            run.append((pre, num, post))
        else:
            flush()
            out.append(n)
    flush()
    return ", ".join(out)


def vector_ids(shape: VecShape) -> Tuple[int, ...]:
    """The V or Z/P/FFR ids that exist for ``shape``'s SVCR (ABI page §5)."""
    sm = shape.sm
    if not shape.sve and not sm:  # SME only, SM = 0: V registers
        return tuple(regs.core(f"V{n}") for n in range(32))
    ids = [regs.sve_z(n) for n in range(32)] + [regs.sve_p(n) for n in range(16)]
    if not sm or shape.fa64:  # streaming FFR only with FA64
        ids.append(regs.sve_ffr())
    return tuple(ids)


def za_ids(shape: VecShape) -> Tuple[int, ...]:
    """ZA rows (SVL/8 of them) and ZT0 (SME2), present only with SVCR.ZA = 1."""
    if not (shape.sme and shape.za):
        return ()
    rows = shape.svl_bits // 8
    ids = [regs.sme_za_row(n) for n in range(rows)]
    if shape.sme2:
        ids.append(regs.sme_zt(0))
    return tuple(ids)


def check(shape: VecShape) -> None:
    """Refuse shapes no vCPU can have (with the reason)."""
    if not (shape.sve or shape.sme):
        raise UsageProblem("the saved state has neither SVE nor SME: there is no vector state to plan")
    if shape.svcr & ~(SVCR_SM | SVCR_ZA):
        raise UsageProblem(f"saved SVCR {shape.svcr:#x} has reserved bits set (only SM = bit 0 and "
                           f"ZA = bit 1 exist, ABI page §5)")
    if not shape.sme and shape.svcr:
        raise UsageProblem(f"saved SVCR is {shape.svcr:#x} but the vCPU has no SME: "
                           f"an SVE-only vCPU always has SVCR = 0")
    if shape.sme and not shape.sme_vqs:
        raise UsageProblem("the saved state has SME but no SME vector lengths (SME_VLS is empty)")
    if shape.sve and not shape.sve_vqs:
        raise UsageProblem("the saved state has SVE but no SVE vector lengths (SVE_VLS is empty)")


def plan(shape: VecShape, fresh: bool = True, psci_bit: int = 2, sve_bit: int = KVM_ARM_VCPU_SVE) -> Plan:
    """The ABI page §6 order for writing ``shape`` back.

    ``fresh``: the destination is a new vCPU (steps 1-4: init, vector
    lengths, ID registers, finalise); otherwise it is already initialised
    and finalised with the same configuration and only the register writes
    are planned. Everything is derived from ``shape.svcr`` (the saved SVCR).
    """
    check(shape)
    steps: List[Step] = []

    def add(action, title, reason, ids=(), features=(), section=""):
        steps.append(Step(len(steps) + 1, action, title, reason, tuple(ids), tuple(features), section))

    if fresh:
        feats = [psci_bit] + ([sve_bit] if shape.sve else []) + (
            [shape.sme_bit] if shape.sme and shape.sme_bit is not None else [])
        names = ["PSCI_0_2"] + (["SVE"] if shape.sve else []) + (["SME"] if shape.sme else [])
        add("init", "KVM_ARM_VCPU_INIT with " + ", ".join(names),
            "the destination must have exactly the source's vector features: they decide which "
            "registers exist at all", features=feats, section="§6.1")
        vls = ([regs.SVE_VLS] if shape.sve else []) + ([regs.SME_VLS] if shape.sme else [])
        sets = []
        if shape.sve:
            sets.append(f"SVE_VLS up to {shape.sve_vl_bits} bits")
        if shape.sme:
            sets.append(f"SME_VLS up to {shape.svl_bits} bits")
        add("set", "set " + " and ".join(sets),
            "register sizes follow the vector lengths, which can only be chosen between INIT and "
            "FINALIZE, and only as a cut of the host's set (refused with the host's list otherwise)",
            ids=vls, section="§4, §6.2")
        if shape.sme:
            idregs = (regs.ID_AA64PFR1_EL1, regs.ID_AA64SMFR0_EL1, regs.SMIDR_EL1)
            add("set", "set " + name_ranges(idregs),
                "ID registers (SME/SME2 level, FA64, SMIDR) are fixed at the first KVM_RUN and decide "
                "whether ZT0 and streaming FFR exist", ids=idregs, section="§6.3")
        add("finalize", "KVM_ARM_VCPU_FINALIZE(KVM_ARM_VCPU_VEC = 4)",
            "one call finalises SVE and SME together; vector registers exist only afterwards",
            section="§4, §6.4")

    ctl = [regs.SVCR] if shape.sme else []
    if shape.sme:
        add("set", f"set SVCR = {shape.svcr:#x} (SM={int(shape.sm)}, ZA={int(shape.za)})",
            "SVCR goes first: it decides which vector registers exist and at which length, any SM "
            "change zeroes V/Z/P/FFR and resets FPSR and FPMR, and turning ZA on zeroes ZA and ZT0, "
            "so every write made before it could be lost", ids=ctl, section="§5, §6.5")
    fp = [regs.core("FPSR"), regs.core("FPCR")] + ([regs.FPMR] if shape.fpmr else [])
    add("set", "set " + name_ranges(fp),
        "after SVCR because an SM change sets FPSR to 0x0800009F and FPMR to 0" if shape.sme else
        "floating-point control before the data (same order as for SME vCPUs)",
        ids=fp, section="§6.5")

    vec = vector_ids(shape)
    if shape.sve and not shape.sm:
        why = f"SM = 0 with SVE: Z/P/FFR at the SVE maximum ({shape.sve_vl_bits} bits); CORE V ids are EINVAL"
    elif shape.sm:
        why = (f"SM = 1: Z/P at the streaming maximum ({shape.svl_bits} bits); FFR "
               + ("included (FA64)" if shape.fa64 else "absent without FA64")
               + "; CORE V ids are EINVAL")
    else:
        why = "SME only with SM = 0: only V0-V31 exist (Z/P/FFR are ENOENT)"
    if shape.sme:
        why += ". Written after SVCR, whose SM change would otherwise zero them"
    add("set", "set " + name_ranges(vec), why,
        ids=vec, section="§5, §6.6")

    za = za_ids(shape)
    if shape.sme:
        if za:
            add("set", "set " + name_ranges(za),
                f"ZA = 1: {shape.svl_bits // 8} ZA rows of {shape.svl_bits // 8} bytes"
                + (", then ZT0 (SME2)" if shape.sme2 else "; no ZT0 without SME2")
                + "; only accessible while SVCR.ZA = 1, which step "
                + f"{next(s.number for s in steps if s.ids == tuple(ctl))} set", ids=za, section="§5, §6.6")
        else:
            add("skip", "no ZA rows, no ZT0",
                "saved ZA = 0: ZA and ZT0 do not exist in this state (EBUSY), nothing to write",
                section="§5, §6.6")

    other = []
    if shape.sme:
        other += [regs.SMCR_EL1, regs.TPIDR2_EL0]  # SMPRI_EL1 only if saved (shape.extra, §3)
    if shape.sve:
        other.append(regs.ZCR_EL1)
    other += [i for i in shape.extra if i not in other]
    add("set", "set " + name_ranges(other),
        "the remaining registers do not depend on SVCR; then the rest of the vCPU and its MP state",
        ids=other, section="§6.7")
    return Plan(shape, fresh, tuple(steps))

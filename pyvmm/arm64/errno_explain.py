"""What a failed KVM call on vector (SVE/SME) state means, and what to do.

Every row of the errno table in docs/kvm-sme-abi.md §7 (the ABI
page) becomes one sentence saying what happened and one saying what to do.
:func:`explain` is pure: it sees only the ioctl name, the errno and the
register name; the fd layer (:mod:`pyvmm._fd`) calls it for every
:class:`pyvmm.errors.KvmError` it builds, so the hint never depends on what ran before.
"""
import errno as E
from typing import NamedTuple, Optional, Tuple

from . import regs

_INIT = "KVM_ARM_VCPU_INIT"
_FINALIZE = "KVM_ARM_VCPU_FINALIZE"
_GET = "KVM_GET_ONE_REG"
_SET = "KVM_SET_ONE_REG"
_ONE_REG = (_GET, _SET)
_RUN = "KVM_RUN"
_REG_LIST = "KVM_GET_REG_LIST"

_FINALIZE_HOW = ("call KVM_ARM_VCPU_FINALIZE(4) once after KVM_ARM_VCPU_INIT and after "
                 "setting SVE_VLS/SME_VLS (pyvmm: sme.configure_vcpu)")


class _Kind(NamedTuple):
    cls: str  # z, p, ffr, v, za, zt, sve_vls, sme_vls, svcr, smpri, sme_other, other
    sliced: bool


def _number(text: str) -> bool:
    return text.isdecimal() and text.isascii()


def _vector_class(reg: str) -> Optional[str]:
    """z, p, ffr, za (each optionally ``[slice N]``), v or zt for a vector register
    name (``Z3``, ``P1[slice 0]``, ``ZA[12]``, ``V0``, ``ZT0``), else None. Read
    without ``re``: pyvmm run explains the errnos of its SME probes while starting."""
    base, sep, tail = reg.partition("[slice ")
    if sep and not (tail.endswith("]") and _number(tail[:-1])):
        return None
    if base == "FFR":
        return "ffr"
    if base.startswith("ZA[") and base.endswith("]") and _number(base[3:-1]):
        return "za"
    if base[:1] in ("Z", "P") and _number(base[1:]):
        return base[0].lower()
    if not sep and base[:1] == "V" and _number(base[1:]):
        return "v"
    if not sep and base[:2] == "ZT" and _number(base[2:]):
        return "zt"
    return None


def _kind(reg: Optional[str]) -> _Kind:
    if not reg:
        return _Kind("none", False)
    sliced = "[slice" in reg
    cls = _vector_class(reg)
    if cls is not None:
        return _Kind(cls, sliced)
    if reg in ("SVE_VLS", "SME_VLS"):
        return _Kind(reg.lower(), False)
    if reg == "SVCR":
        return _Kind("svcr", False)
    if reg == "SMPRI_EL1":
        return _Kind("smpri", False)
    if reg.startswith("UNKNOWN_") and regs.coproc_of(regs.parse(reg)) == regs.COPROC_SME:
        return _Kind("sme_unknown", False)
    return _Kind("other", False)


def explain(ioctl: str, err: int, reg: Optional[str] = None) -> Optional[str]:
    """A hint for ``ioctl`` failing with ``err`` on register ``reg`` (a name
    from :func:`pyvmm.arm64.regs.name`), or None when the ABI page has nothing to
    say about it."""
    k = _kind(reg)

    if ioctl == _INIT:
        if err == E.ENOENT:  # §7 row 1
            return ("a requested vCPU feature bit is unknown to this kernel; if it was the SME bit, this "
                    "kernel does not carry the KVM SME ABI or numbers it differently: let pyvmm probe "
                    "the bit (pyvmm caps) or give it with --sme-bit / PYVMM_SME_BIT")
        if err == E.EINVAL:  # §7 row 2
            return ("the host cannot offer a requested vCPU feature; for SME: the CPUs have no SME, or "
                    "no streaming vector length common to all of them, or the features differ from the "
                    "VM's other vCPUs: run pyvmm caps, or start the VM without SME")
        return None

    if ioctl == _FINALIZE:
        if err == E.EINVAL:  # §4
            return ("the vCPU has neither SVE nor SME (or the argument is not KVM_ARM_VCPU_VEC = 4): "
                    "initialise it with the SVE and/or SME feature bit first")
        if err == E.EPERM:  # §4
            return "the vCPU is already finalised: KVM_ARM_VCPU_FINALIZE(4) is called exactly once"
        return None

    if ioctl in (_RUN, _REG_LIST) and err == E.EPERM:  # §4, §7 row 4
        return f"the vCPU has SVE or SME and is not finalised yet: {_FINALIZE_HOW}"

    if ioctl not in _ONE_REG:
        return None

    if k.cls in ("sve_vls", "sme_vls"):  # §7 row 3
        feat = "SVE (bit 4)" if k.cls == "sve_vls" else "SME"
        if err == E.ENOENT:
            return (f"this vCPU was not initialised with the {feat} feature, so it has no "
                    f"{reg}: add the feature at KVM_ARM_VCPU_INIT or leave {reg} alone")
        if err == E.EINVAL:
            return (f"{reg} may only be cut: the new set must equal the host's set up to a chosen "
                    f"maximum and be empty above it: read {reg} after KVM_ARM_VCPU_INIT and pick a "
                    f"maximum from it (pyvmm refuses a length the host does not offer)")
        if err == E.EPERM:
            return (f"vector lengths are fixed once the vCPU is finalised: write {reg} between "
                    f"KVM_ARM_VCPU_INIT and KVM_ARM_VCPU_FINALIZE")
        return None

    if err == E.EPERM and k.cls in ("z", "p", "ffr", "za", "zt"):  # §7 row 4
        return f"vector registers exist only after finalisation: {_FINALIZE_HOW}"

    if err == E.EBUSY and k.cls in ("za", "zt"):  # §7 row 5
        return ("ZA is off in this vCPU (SVCR.ZA = 0): ZA and ZT0 exist only while it is on; write "
                "SVCR with ZA = 1 first (note that turning ZA on zeroes ZA and ZT0); a new vCPU has ZA "
                "off, so this comes even before finalisation")

    if err == E.ENOENT:  # §7 row 6
        if k.sliced:
            return ("only slice 0 exists: vector lengths are at most 2048 bits, so one slice holds a "
                    "whole register; use slice 0")
        if k.cls == "zt":
            return ("ZT0 needs SME2 in the guest's ID_AA64PFR1_EL1 (SME field = 2); this vCPU has "
                    "SME only: leave ZT0 out of its state, or keep ID_AA64PFR1_EL1.SME at 2")
        if k.cls in ("z", "p"):
            return ("Z and P do not exist in this mode: an SME-only vCPU (no SVE) outside streaming "
                    "mode (SVCR.SM = 0) has only V0-V31; use V registers, or set SVCR.SM = 1 first "
                    "(which zeroes the vector registers)")
        if k.cls == "ffr":
            return ("FFR does not exist in this mode: outside streaming mode an SME-only vCPU has no "
                    "FFR, and in streaming mode (SVCR.SM = 1) FFR exists only with FA64 "
                    "(ID_AA64SMFR0_EL1.FA64): leave FFR out of the state for this mode")
        if k.cls == "smpri":
            return ("SMPRI_EL1 has no userspace state: streaming mode priorities are not offered and the "
                    "guest reads it as 0, so KVM does not list it (KVM_GET_REG_LIST); leave it out")
        if k.cls == "za":
            return "no such SME register on this vCPU: was it initialised with the SME feature bit?"
        return None

    if err == E.EINVAL:  # §7 rows 7 and 8
        if k.cls == "za":
            return ("ZA row out of range: ZA has SVL/8 rows (SVL = the vCPU's maximum streaming "
                    "vector length in bits), numbered 0 to SVL/8 - 1")
        if k.cls == "sme_unknown" or k.cls == "zt":  # ZT1..: only ZT0 exists (v12 21/29)
            return ("unknown SME register id (coprocessor 0x17): only ZA rows, ZT0 and SME_VLS exist, "
                    "at their own sizes (decode the size field too: ZA row 48 and ZT0 differ only in it)")
        if k.cls == "svcr" and ioctl == _SET:
            return ("only SVCR.SM (bit 0) and SVCR.ZA (bit 1) may be set; bits 63:2 are reserved "
                    "and must be 0")
        if k.cls == "v":
            return ("V0-V31 are not accessible as CORE registers while SVE is on, or on an SME-only "
                    "vCPU in streaming mode (SVCR.SM = 1): use Zn instead; its first 16 bytes are Vn")
        return None
    return None


class Row(NamedTuple):
    """One case of the ABI page's errno table (§7), as a call that produces it."""
    situation: str
    ioctl: str
    errno: int
    reg: Optional[str]


# Every §7 case, one call each; the tests check that each has a hint.
TABLE: Tuple[Row, ...] = (
    Row("SME feature bit unknown to the kernel", _INIT, E.ENOENT, None),
    Row("host cannot offer SME", _INIT, E.EINVAL, None),
    Row("SVE_VLS on a vCPU without SVE", _GET, E.ENOENT, "SVE_VLS"),
    Row("SME_VLS on a vCPU without SME", _GET, E.ENOENT, "SME_VLS"),
    Row("SVE_VLS bad set", _SET, E.EINVAL, "SVE_VLS"),
    Row("SME_VLS bad set", _SET, E.EINVAL, "SME_VLS"),
    Row("SME_VLS after finalise", _SET, E.EPERM, "SME_VLS"),
    Row("SVE_VLS after finalise", _SET, E.EPERM, "SVE_VLS"),
    Row("Z register before finalise", _GET, E.EPERM, "Z0"),
    Row("ZA row before finalise", _GET, E.EPERM, "ZA[0]"),
    Row("KVM_RUN before finalise", _RUN, E.EPERM, None),
    Row("register list before finalise", _REG_LIST, E.EPERM, None),
    Row("ZA while SVCR.ZA = 0", _GET, E.EBUSY, "ZA[3]"),
    Row("ZT0 while SVCR.ZA = 0", _SET, E.EBUSY, "ZT0"),
    Row("ZT0 without SME2", _GET, E.ENOENT, "ZT0"),
    Row("Z/P not available in this mode", _GET, E.ENOENT, "P2"),
    Row("FFR not available in this mode", _GET, E.ENOENT, "FFR"),
    Row("slice other than 0", _GET, E.ENOENT, "Z1[slice 1]"),
    Row("ZA row at or above SVL/8", _GET, E.EINVAL, "ZA[200]"),
    Row("unknown SME id", _GET, E.EINVAL, None),  # reg filled in below
    Row("SVCR reserved bits", _SET, E.EINVAL, "SVCR"),
    Row("SMPRI_EL1 (no userspace state)", _GET, E.ENOENT, "SMPRI_EL1"),
    Row("CORE V register while SVE is on or SME-only with SM = 1", _GET, E.EINVAL, "V5"),
    Row("finalise without SVE or SME", _FINALIZE, E.EINVAL, None),
    Row("finalise twice", _FINALIZE, E.EPERM, None),
)




def unknown_sme_id() -> int:
    """An id in the SME coprocessor space that names nothing: ZA row 1's
    number at ZT0's size (U512)."""
    za1 = regs.sme_za_row(1)
    return (za1 & ~regs.SIZE_MASK) | (regs.SIZE_U512 << regs.SIZE_SHIFT)


TABLE = tuple(r._replace(reg=regs.name(unknown_sme_id())) if r.situation == "unknown SME id" else r
              for r in TABLE)

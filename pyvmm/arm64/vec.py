"""The one vector (SVE/SME) configuration type, :class:`VecShape`, with the facts it is built from.

Each fact is written once here: the SVCR bits, the FINALIZE argument, the
FA64 and SME fields of the ID registers, the vector-length rule and the
vector length of a VQ set (docs/kvm-sme-abi.md, "the ABI page", §1, §3-§5).
A VQ is 128 bits; a VLS register holds the set of VQs a vCPU offers.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Iterable, Optional, Tuple

from .._record import record, replace
from ..errors import UsageProblem
from . import regs

SVCR_SM = 1 << 0  # ABI page §3: SVCR.SM = bit 0 (streaming mode)
SVCR_ZA = 1 << 1  # SVCR.ZA = bit 1 (ZA storage on)
KVM_ARM_VCPU_SVE = 4  # the INIT feature bit of SVE (merged ABI)
KVM_ARM_VCPU_VEC = 4  # FINALIZE's argument: the same number as _SVE, finalises SVE and SME together (§1, §4)
SMFR0_FA64 = 1 << 63  # ID_AA64SMFR0_EL1.FA64: the full A64 set (FFR included) in streaming mode (§3)
PFR1_SME_SHIFT = 24  # ID_AA64PFR1_EL1.SME [27:24]: 0 none, 1 SME, 2 SME2
VL_MIN_BITS, VL_MAX_BITS = 128, 2048  # architectural vector lengths: multiples of 128 in this range
CONFIGS = ("sve+sme", "sme", "sve")  # the three vCPU configurations of §5
# Control registers a vector state carries besides SVCR and FP status, by the
# name a saved state keys them with; the restore plan writes them in §6 step 7.
EXTRA_IDS = {"SMCR_EL1": regs.SMCR_EL1, "TPIDR2_EL0": regs.TPIDR2_EL0, "SMPRI_EL1": regs.SMPRI_EL1,
             "ZCR_EL1": regs.ZCR_EL1}


def parse_vl(text, what: str = "vector length") -> int:
    """The VQ of a vector length given in bits (an option's value): a
    multiple of 128 in 128..2048, refused with the rule otherwise."""
    try:
        bits = int(text)
    except (TypeError, ValueError):
        raise UsageProblem(f"{what} {text!r} is not a number of bits",
                           f"give a multiple of 128 between {VL_MIN_BITS} and {VL_MAX_BITS}") from None
    if bits < VL_MIN_BITS or bits > VL_MAX_BITS or bits % 128:
        raise UsageProblem(f"{what} {bits} is not a multiple of 128 between {VL_MIN_BITS} and {VL_MAX_BITS}")
    return bits // 128


def vl_bytes(vqs: Iterable[int]) -> int:
    """The (maximum) vector length of a VQ set in bytes, 0 for an empty set:
    the SVE VL, or for SME_VLS the SVL (= ZA rows = bytes per ZA row)."""
    vqs = tuple(vqs)
    return 16 * max(vqs) if vqs else 0


def fa64_of(smfr0: int) -> bool:
    """ID_AA64SMFR0_EL1.FA64."""
    return bool(smfr0 & SMFR0_FA64)


def sme_level(pfr1: int) -> int:
    """ID_AA64PFR1_EL1.SME: 0 no SME, 1 SME, 2 SME2 (ZT0 exists)."""
    return (pfr1 >> PFR1_SME_SHIFT) & 0xF


def with_sme_level(pfr1: int, level: int) -> int:
    """``pfr1`` with its SME field set to ``level``."""
    return (pfr1 & ~(0xF << PFR1_SME_SHIFT)) | (level << PFR1_SME_SHIFT)


@record(frozen=True)
class VecShape:
    """A vCPU's vector configuration, and the SVCR its state was taken in.

    ``sve``/``sme``: the features the vCPU has; ``sve_vqs``/``sme_vqs`` its
    SVE_VLS/SME_VLS sets after the cuts; ``fa64``/``sme2`` whether it has
    FA64 (ID_AA64SMFR0_EL1) and SME2 (ID_AA64PFR1_EL1.SME = 2); ``fpmr``
    whether FPMR exists; ``sme_bit`` the SME INIT feature bit used;
    ``svcr`` the SVCR a state was saved with; ``extra`` more control
    register ids saved with a state (the restore plan writes them in §6
    step 7). Build one with a named constructor: :meth:`from_vls`,
    :meth:`from_id_regs`, :meth:`from_saved`, :meth:`from_options`.
    """
    sve: bool
    sme: bool
    svcr: int = 0
    sve_vqs: Tuple[int, ...] = ()
    sme_vqs: Tuple[int, ...] = ()
    fa64: bool = True
    sme2: bool = True
    fpmr: bool = False
    sme_bit: Optional[int] = None
    extra: Tuple[int, ...] = ()

    # -- named constructors --
    @classmethod
    def from_vls(cls, sve_vqs: Iterable[int], sme_vqs: Iterable[int], sme_bit: Optional[int] = None) -> "VecShape":
        """From the VLS registers' sets alone (an empty set: the feature is
        off), e.g. the configuration :func:`pyvmm.sme.configure_vcpu` gave."""
        sve_vqs, sme_vqs = tuple(sve_vqs), tuple(sme_vqs)
        return cls(sve=bool(sve_vqs), sme=bool(sme_vqs), sve_vqs=sve_vqs, sme_vqs=sme_vqs,
                   sme_bit=sme_bit if sme_vqs else None)

    @classmethod
    def from_id_regs(cls, sve_vqs: Iterable[int], sme_vqs: Iterable[int], pfr1: int, smfr0: int, *,
                     sve: Optional[bool] = None, sme: Optional[bool] = None, svcr: int = 0,
                     fpmr: bool = False, sme_bit: Optional[int] = None,
                     extra: Tuple[int, ...] = ()) -> "VecShape":
        """From the VLS sets and the ID registers' values (a live vCPU, or a
        saved register list): FA64 and SME2 come from SMFR0 and PFR1. The
        features default to "the set is not empty"."""
        sve_vqs, sme_vqs = tuple(sve_vqs), tuple(sme_vqs)
        sve = bool(sve_vqs) if sve is None else sve
        sme = bool(sme_vqs) if sme is None else sme
        return cls(sve=sve, sme=sme, svcr=svcr, sve_vqs=sve_vqs, sme_vqs=sme_vqs,
                   fa64=fa64_of(smfr0) if sme else False, sme2=sme_level(pfr1) >= 2 if sme else False,
                   fpmr=fpmr, sme_bit=sme_bit if sme else None, extra=tuple(extra))

    @classmethod
    def from_saved(cls, vec: "VecShape", registers) -> "VecShape":
        """From a saved vector state: the configuration and SVCR it was saved
        with (``vec``) and the names of the registers it holds (``registers``),
        which say whether FPMR and which control registers come back."""
        return replace(vec, fpmr="FPMR" in registers,
                       extra=tuple(i for n, i in EXTRA_IDS.items() if n in registers))

    @classmethod
    def from_options(cls, config: str, sm: int, za: int, svl_bits: int = 512, sve_vl_bits: int = 256,
                     fa64: bool = True, sme2: bool = True, fpmr: bool = False,
                     sme_bit: Optional[int] = None) -> "VecShape":
        """From command-line style parameters (``pyvmm restore-plan``): every
        length up to each maximum."""
        if config not in CONFIGS:
            raise UsageProblem(f"unknown vCPU configuration {config!r}", "use one of: " + ", ".join(CONFIGS))
        sve = config in ("sve+sme", "sve")
        sme = config in ("sve+sme", "sme")
        svl_vq, sve_vq = parse_vl(svl_bits, "SVL"), parse_vl(sve_vl_bits, "SVE VL")
        return cls(sve=sve, sme=sme, svcr=(SVCR_SM if sm else 0) | (SVCR_ZA if za else 0),
                   sve_vqs=tuple(range(1, sve_vq + 1)) if sve else (),
                   sme_vqs=tuple(range(1, svl_vq + 1)) if sme else (),
                   fa64=fa64 if sme else False, sme2=sme2 if sme else False, fpmr=fpmr, sme_bit=sme_bit)

    def with_svcr(self, svcr: int) -> "VecShape":
        return replace(self, svcr=svcr)

    # -- derived facts --
    @property
    def config(self) -> str:
        return {(True, True): "sve+sme", (False, True): "sme", (True, False): "sve"}.get(
            (self.sve, self.sme), "none")

    @property
    def sm(self) -> bool:
        return bool(self.svcr & SVCR_SM)

    @property
    def za(self) -> bool:
        return bool(self.svcr & SVCR_ZA)

    @property
    def svl_bytes(self) -> int:
        """Maximum streaming vector length in bytes (= ZA rows)."""
        return vl_bytes(self.sme_vqs)

    @property
    def sve_vl_bytes(self) -> int:
        return vl_bytes(self.sve_vqs)

    @property
    def svl_bits(self) -> int:
        return 8 * self.svl_bytes

    @property
    def sve_vl_bits(self) -> int:
        return 8 * self.sve_vl_bytes

    def vl_bytes(self, svcr: Optional[int] = None) -> int:
        """Bytes of data in a Z register in mode ``svcr`` (default: the
        shape's): the SVL in streaming mode, else the SVE VL; 0 when the mode
        has only V registers (SME only, SM = 0) (§5)."""
        svcr = self.svcr if svcr is None else svcr
        return self.svl_bytes if svcr & SVCR_SM else self.sve_vl_bytes

    def has_ffr(self, svcr: Optional[int] = None) -> bool:
        """Whether FFR exists in mode ``svcr``: in streaming mode only with FA64 (§5)."""
        svcr = self.svcr if svcr is None else svcr
        return self.fa64 if svcr & SVCR_SM else self.sve

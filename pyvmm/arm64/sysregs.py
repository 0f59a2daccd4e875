"""Architectural names of AArch64 system registers, by (op0, op1, CRn, CRm, op2).

Encodings are the Arm ARM's (DDI 0487, "System register index"). Only the
registers KVM may list for an EL1 guest, the SME ones the ABI adds and the
GICv3 CPU interface registers the vGIC saves are named; ids are derived from these tuples in :mod:`pyvmm.arm64.regs`.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Dict, Optional, Tuple

if TYPE_CHECKING:
    Enc = Tuple[int, int, int, int, int]

_TABLE = """
# --- identification (op0=3, op1=0, CRn=0) ---
MIDR_EL1 3 0 0 0 0
MPIDR_EL1 3 0 0 0 5
REVIDR_EL1 3 0 0 0 6
ID_PFR0_EL1 3 0 0 1 0
ID_PFR1_EL1 3 0 0 1 1
ID_DFR0_EL1 3 0 0 1 2
ID_AFR0_EL1 3 0 0 1 3
ID_MMFR0_EL1 3 0 0 1 4
ID_MMFR1_EL1 3 0 0 1 5
ID_MMFR2_EL1 3 0 0 1 6
ID_MMFR3_EL1 3 0 0 1 7
ID_ISAR0_EL1 3 0 0 2 0
ID_ISAR1_EL1 3 0 0 2 1
ID_ISAR2_EL1 3 0 0 2 2
ID_ISAR3_EL1 3 0 0 2 3
ID_ISAR4_EL1 3 0 0 2 4
ID_ISAR5_EL1 3 0 0 2 5
ID_MMFR4_EL1 3 0 0 2 6
ID_ISAR6_EL1 3 0 0 2 7
MVFR0_EL1 3 0 0 3 0
MVFR1_EL1 3 0 0 3 1
MVFR2_EL1 3 0 0 3 2
ID_PFR2_EL1 3 0 0 3 4
ID_DFR1_EL1 3 0 0 3 5
ID_MMFR5_EL1 3 0 0 3 6
ID_AA64PFR0_EL1 3 0 0 4 0
ID_AA64PFR1_EL1 3 0 0 4 1
ID_AA64PFR2_EL1 3 0 0 4 2
ID_AA64ZFR0_EL1 3 0 0 4 4
ID_AA64SMFR0_EL1 3 0 0 4 5
ID_AA64FPFR0_EL1 3 0 0 4 7
ID_AA64DFR0_EL1 3 0 0 5 0
ID_AA64DFR1_EL1 3 0 0 5 1
ID_AA64DFR2_EL1 3 0 0 5 2
ID_AA64AFR0_EL1 3 0 0 5 4
ID_AA64AFR1_EL1 3 0 0 5 5
ID_AA64ISAR0_EL1 3 0 0 6 0
ID_AA64ISAR1_EL1 3 0 0 6 1
ID_AA64ISAR2_EL1 3 0 0 6 2
ID_AA64ISAR3_EL1 3 0 0 6 3
ID_AA64MMFR0_EL1 3 0 0 7 0
ID_AA64MMFR1_EL1 3 0 0 7 1
ID_AA64MMFR2_EL1 3 0 0 7 2
ID_AA64MMFR3_EL1 3 0 0 7 3
ID_AA64MMFR4_EL1 3 0 0 7 4
CCSIDR_EL1 3 1 0 0 0
CLIDR_EL1 3 1 0 0 1
CCSIDR2_EL1 3 1 0 0 2
GMID_EL1 3 1 0 0 4
SMIDR_EL1 3 1 0 0 6
AIDR_EL1 3 1 0 0 7
CSSELR_EL1 3 2 0 0 0
CTR_EL0 3 3 0 0 1
DCZID_EL0 3 3 0 0 7
# --- EL1 control ---
SCTLR_EL1 3 0 1 0 0
ACTLR_EL1 3 0 1 0 1
CPACR_EL1 3 0 1 0 2
SCTLR2_EL1 3 0 1 0 3
RGSR_EL1 3 0 1 0 5
GCR_EL1 3 0 1 0 6
ZCR_EL1 3 0 1 2 0
TRFCR_EL1 3 0 1 2 1
SMPRI_EL1 3 0 1 2 4
SMCR_EL1 3 0 1 2 6
TTBR0_EL1 3 0 2 0 0
TTBR1_EL1 3 0 2 0 1
TCR_EL1 3 0 2 0 2
TCR2_EL1 3 0 2 0 3
APIAKEYLO_EL1 3 0 2 1 0
APIAKEYHI_EL1 3 0 2 1 1
APIBKEYLO_EL1 3 0 2 1 2
APIBKEYHI_EL1 3 0 2 1 3
APDAKEYLO_EL1 3 0 2 2 0
APDAKEYHI_EL1 3 0 2 2 1
APDBKEYLO_EL1 3 0 2 2 2
APDBKEYHI_EL1 3 0 2 2 3
APGAKEYLO_EL1 3 0 2 3 0
APGAKEYHI_EL1 3 0 2 3 1
GCSCR_EL1 3 0 2 5 0
GCSPR_EL1 3 0 2 5 1
GCSCRE0_EL1 3 0 2 5 2
ICC_PMR_EL1 3 0 4 6 0
AFSR0_EL1 3 0 5 1 0
AFSR1_EL1 3 0 5 1 1
ESR_EL1 3 0 5 2 0
ERRIDR_EL1 3 0 5 3 0
ERRSELR_EL1 3 0 5 3 1
ERXFR_EL1 3 0 5 4 0
ERXCTLR_EL1 3 0 5 4 1
ERXSTATUS_EL1 3 0 5 4 2
ERXADDR_EL1 3 0 5 4 3
ERXPFGF_EL1 3 0 5 4 4
ERXPFGCTL_EL1 3 0 5 4 5
ERXPFGCDN_EL1 3 0 5 4 6
ERXMISC0_EL1 3 0 5 5 0
ERXMISC1_EL1 3 0 5 5 1
ERXMISC2_EL1 3 0 5 5 2
ERXMISC3_EL1 3 0 5 5 3
TFSR_EL1 3 0 5 6 0
TFSRE0_EL1 3 0 5 6 1
FAR_EL1 3 0 6 0 0
PAR_EL1 3 0 7 4 0
PMSCR_EL1 3 0 9 9 0
PMSNEVFR_EL1 3 0 9 9 1
PMSICR_EL1 3 0 9 9 2
PMSIRR_EL1 3 0 9 9 3
PMSFCR_EL1 3 0 9 9 4
PMSEVFR_EL1 3 0 9 9 5
PMSLATFR_EL1 3 0 9 9 6
PMSIDR_EL1 3 0 9 9 7
PMBLIMITR_EL1 3 0 9 10 0
PMBPTR_EL1 3 0 9 10 1
PMBSR_EL1 3 0 9 10 3
PMBIDR_EL1 3 0 9 10 7
TRBLIMITR_EL1 3 0 9 11 0
TRBPTR_EL1 3 0 9 11 1
TRBBASER_EL1 3 0 9 11 2
TRBSR_EL1 3 0 9 11 3
TRBMAR_EL1 3 0 9 11 4
TRBTRG_EL1 3 0 9 11 6
TRBIDR_EL1 3 0 9 11 7
PMINTENSET_EL1 3 0 9 14 1
PMINTENCLR_EL1 3 0 9 14 2
PMMIR_EL1 3 0 9 14 6
MAIR_EL1 3 0 10 2 0
MAIR2_EL1 3 0 10 2 1
PIRE0_EL1 3 0 10 2 2
PIR_EL1 3 0 10 2 3
POR_EL1 3 0 10 2 4
AMAIR_EL1 3 0 10 3 0
AMAIR2_EL1 3 0 10 3 1
LORSA_EL1 3 0 10 4 0
LOREA_EL1 3 0 10 4 1
LORN_EL1 3 0 10 4 2
LORC_EL1 3 0 10 4 3
MPAMIDR_EL1 3 0 10 4 4
LORID_EL1 3 0 10 4 7
MPAM1_EL1 3 0 10 5 0
MPAM0_EL1 3 0 10 5 1
MPAMSM_EL1 3 0 10 5 3
VBAR_EL1 3 0 12 0 0
DISR_EL1 3 0 12 1 1
ICC_SRE_EL1 3 0 12 12 5
CONTEXTIDR_EL1 3 0 13 0 1
TPIDR_EL1 3 0 13 0 4
ACCDATA_EL1 3 0 13 0 5
SCXTNUM_EL1 3 0 13 0 7
CNTKCTL_EL1 3 0 14 1 0
# --- GICv3 CPU interface (the vGIC's CPU_SYSREGS group; ICC_PMR/ICC_SRE above) ---
ICC_BPR0_EL1 3 0 12 8 3
ICC_BPR1_EL1 3 0 12 12 3
ICC_CTLR_EL1 3 0 12 12 4
ICC_IGRPEN0_EL1 3 0 12 12 6
ICC_IGRPEN1_EL1 3 0 12 12 7
# --- EL0 ---
# SPSR_EL1, ELR_EL1, SP_EL0, FPCR and FPSR are not here: KVM exposes them only
# as core registers (struct kvm_regs), and their names belong to those ids.
NZCV 3 3 4 2 0
DAIF 3 3 4 2 1
SVCR 3 3 4 2 2
DIT 3 3 4 2 5
SSBS 3 3 4 2 6
TCO 3 3 4 2 7
FPMR 3 3 4 4 2
GCSPR_EL0 3 3 2 5 1
PMCR_EL0 3 3 9 12 0
PMCNTENSET_EL0 3 3 9 12 1
PMCNTENCLR_EL0 3 3 9 12 2
PMOVSCLR_EL0 3 3 9 12 3
PMSWINC_EL0 3 3 9 12 4
PMSELR_EL0 3 3 9 12 5
PMCEID0_EL0 3 3 9 12 6
PMCEID1_EL0 3 3 9 12 7
PMCCNTR_EL0 3 3 9 13 0
PMXEVTYPER_EL0 3 3 9 13 1
PMXEVCNTR_EL0 3 3 9 13 2
PMUSERENR_EL0 3 3 9 14 0
PMOVSSET_EL0 3 3 9 14 3
PMCCFILTR_EL0 3 3 14 15 7
POR_EL0 3 3 10 2 4
TPIDR_EL0 3 3 13 0 2
TPIDRRO_EL0 3 3 13 0 3
TPIDR2_EL0 3 3 13 0 5
SCXTNUM_EL0 3 3 13 0 7
CNTFRQ_EL0 3 3 14 0 0
CNTPCT_EL0 3 3 14 0 1
CNTPCTSS_EL0 3 3 14 0 5
CNTVCTSS_EL0 3 3 14 0 6
CNTP_TVAL_EL0 3 3 14 2 0
CNTP_CTL_EL0 3 3 14 2 1
CNTP_CVAL_EL0 3 3 14 2 2
CNTV_TVAL_EL0 3 3 14 3 0
CNTV_CTL_EL0 3 3 14 3 1
# KVM's uapi swaps these two encodings (arch/arm64/include/uapi/asm/kvm.h:
# KVM_REG_ARM_TIMER_CNT is (3,3,14,3,2), KVM_REG_ARM_TIMER_CVAL is (3,3,14,0,2)).
# Names here follow what the ONE_REG id means, not the architectural encoding.
CNTVCT_EL0 3 3 14 3 2
CNTV_CVAL_EL0 3 3 14 0 2
# --- AArch32 state kept in EL2 registers (listed by KVM for every vCPU) ---
DACR32_EL2 3 4 3 0 0
IFSR32_EL2 3 4 5 0 1
FPEXC32_EL2 3 4 5 3 0
# --- debug (op0=2) ---
OSDTRRX_EL1 2 0 0 0 2
MDCCINT_EL1 2 0 0 2 0
MDSCR_EL1 2 0 0 2 2
OSDTRTX_EL1 2 0 0 3 2
MDSELR_EL1 2 0 0 4 2
OSECCR_EL1 2 0 0 6 2
MDRAR_EL1 2 0 1 0 0
OSLAR_EL1 2 0 1 0 4
OSLSR_EL1 2 0 1 1 4
OSDLR_EL1 2 0 1 3 4
DBGPRCR_EL1 2 0 1 4 4
DBGCLAIMSET_EL1 2 0 7 8 6
DBGCLAIMCLR_EL1 2 0 7 9 6
DBGAUTHSTATUS_EL1 2 0 7 14 6
MDCCSR_EL0 2 3 0 1 0
DBGDTR_EL0 2 3 0 4 0
DBGDTRRX_EL0 2 3 0 5 0
DBGVCR32_EL2 2 4 0 7 0
"""


def _build() -> Dict[str, Enc]:
    table: Dict[str, Enc] = {}
    for line in _TABLE.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, *nums = line.split()
        table[name] = tuple(int(n) for n in nums)  # type: ignore[assignment]
    for prefix, suffix, count, enc in _FAMILIES:
        for n in range(count):
            table[f"{prefix}{n}{suffix}"] = enc(n)
    return table


# Numbered families: (prefix, suffix, how many, encoding of number n).
_FAMILIES = (
    ("DBGBVR", "_EL1", 16, lambda n: (2, 0, 0, n, 4)),
    ("DBGBCR", "_EL1", 16, lambda n: (2, 0, 0, n, 5)),
    ("DBGWVR", "_EL1", 16, lambda n: (2, 0, 0, n, 6)),
    ("DBGWCR", "_EL1", 16, lambda n: (2, 0, 0, n, 7)),
    ("ICC_AP0R", "_EL1", 4, lambda n: (3, 0, 12, 8, 4 + n)),
    ("ICC_AP1R", "_EL1", 4, lambda n: (3, 0, 12, 9, n)),
    ("PMEVCNTR", "_EL0", 31, lambda n: (3, 3, 14, 8 + n // 8, n % 8)),
    ("PMEVTYPER", "_EL0", 31, lambda n: (3, 3, 14, 12 + n // 8, n % 8)),
)


if TYPE_CHECKING:
    BY_NAME: Dict[str, Enc]
    BY_ENCODING: Dict[Enc, str]
_tables: Dict[str, dict] = {}


def _built() -> Dict[str, dict]:
    """BY_NAME and BY_ENCODING, built on first use: the registers ``pyvmm run``
    names before its first KVM_RUN are read from the text alone (start-up time)."""
    if not _tables:
        by_name = _build()
        by_encoding: Dict[Enc, str] = {}
        for name, enc in by_name.items():
            if enc in by_encoding:
                raise AssertionError(f"sysreg table: {name} and {by_encoding[enc]} share {enc}")
            by_encoding[enc] = name
        _tables.update(BY_NAME=by_name, BY_ENCODING=by_encoding)
    return _tables


def __getattr__(attr: str) -> dict:
    if attr in ("BY_NAME", "BY_ENCODING"):
        return _built()[attr]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def _listed(upper: str) -> Optional[Enc]:
    """A register's encoding from its line of the table's text or its family, without the tables."""
    start = _TABLE.find(f"\n{upper} ")
    if start < 0:
        for prefix, suffix, count, enc in _FAMILIES:
            number = upper[len(prefix):-len(suffix)]
            if upper.startswith(prefix) and upper.endswith(suffix) and number.isdigit() and int(number) < count \
                    and str(int(number)) == number:
                return enc(int(number))
        return None
    nums = _TABLE[start + len(upper) + 2:_TABLE.index("\n", start + 1)].split()
    return tuple(int(n) for n in nums)  # type: ignore[return-value]


def is_id_space(enc: Enc) -> bool:
    """op0=3, op1=0, CRn=0, CRm=1..7 is the ID register space; the
    architecture reserves its unallocated encodings as RAZ ID registers."""
    op0, op1, crn, crm, _ = enc
    return op0 == 3 and op1 == 0 and crn == 0 and 1 <= crm <= 7


def name_of(enc: Enc) -> str:
    """Architectural name, ``ID_UNALLOCATED_C<m>_<op2>`` for reserved ID
    registers, or the generic ``S<op0>_<op1>_C<n>_C<m>_<op2>`` form."""
    name = _built()["BY_ENCODING"].get(enc)
    if name:
        return name
    op0, op1, crn, crm, op2 = enc
    if is_id_space(enc):
        return f"ID_UNALLOCATED_C{crm}_{op2}"
    return f"S{op0}_{op1}_C{crn}_C{crm}_{op2}"


def encoding_of(name: str) -> Enc:
    """Inverse of :func:`name_of` (accepts all three forms)."""
    upper = name.upper()
    enc = _tables["BY_NAME"].get(upper) if _tables else _listed(upper)
    if enc is not None:
        return enc
    import re  # only for the generic forms: the names regs.py resolves at import need no re

    m = re.fullmatch(r"ID_UNALLOCATED_C([1-7])_([0-7])", upper)
    if m:
        return (3, 0, 0, int(m.group(1)), int(m.group(2)))
    m = re.fullmatch(r"S([0-3])_([0-7])_C(\d+)_C(\d+)_([0-7])", upper)
    if m and int(m.group(3)) < 16 and int(m.group(4)) < 16:
        return tuple(int(g) for g in m.groups())  # type: ignore[return-value]
    raise KeyError(f"unknown system register name {name!r}")

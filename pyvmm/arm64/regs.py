"""arm64 KVM register ids: encode, decode and name every class.

This module (and its tests) is the only place register ids appear in hex.
Sources: arch/arm64/include/uapi/asm/kvm.h and include/uapi/linux/kvm.h of
Linux 7.3 for the merged classes; docs/kvm-sme-abi.md §1 and §3 for
the SME ids (coprocessor 0x17), which no released header carries yet.

Layout of an id (64 bits): arch in [63:56] (arm64 = 0x60), size in [55:52]
(buffer is 2**size bytes), coprocessor in [31:16], class-specific bits below.
Always decode using the size too: ZA row 48 and ZT0 share their low 16 bits
(0x0600) and differ only in size (ABI page §1).
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Dict, NamedTuple, Optional, Tuple

from .._record import tuple_record

# pyvmm.arm64.sysregs (the system registers' names and encodings) is imported by the
# functions that look a name or an encoding up, on first use: ``pyvmm run`` needs none
# of it, as the registers it names are the constants below (issue 13, item 5: start-up).

KVM_REG_ARM64 = 0x6000000000000000
ARCH_MASK = 0xFF00000000000000
SIZE_SHIFT = 52
SIZE_MASK = 0x00F0000000000000
COPROC_SHIFT = 16
COPROC_MASK = 0x000000000FFF0000

SIZE_U8, SIZE_U16, SIZE_U32, SIZE_U64 = 0, 1, 2, 3
SIZE_U128, SIZE_U256, SIZE_U512, SIZE_U1024, SIZE_U2048 = 4, 5, 6, 7, 8

COPROC_CORE = 0x10
COPROC_DEMUX = 0x11
COPROC_SYSREG = 0x13
COPROC_FW = 0x14
COPROC_SVE = 0x15
COPROC_FW_FEAT_BMAP = 0x16
COPROC_SME = 0x17  # ABI page §1 (new, not in 7.3 headers)

# SVE (merged): Z base 0, P base 0x400, FFR base 0x600; n in [9:5], slice in [4:0].
SVE_ZREG_BASE = 0x000
SVE_PREG_BASE = 0x400
SVE_FFR_BASE = 0x600
SVE_VLS_LOW = 0xFFFF
# SME (ABI page §3): ZA row n in [12:5] (n <= 255), slice in [4:0];
# ZTn = 0x0600 | n at U512; SME_VLS = 0xFFFE at U512.
SME_ZT_BASE = 0x600
SME_VLS_LOW = 0xFFFE

MAX_SLICES = 32
SVE_VQ_MAX = 512  # architecture allows up to 2048-bit vectors: VQ <= 16 in practice
SME_VQ_MAX = 16  # KVM_ARM64_SME_VQ_MAX (ABI page §3): at most 256 ZA rows
VLS_WORDS = 8

DEMUX_ID_CCSIDR = 0x00

FW_REGS = {
    0: "PSCI_VERSION",
    1: "SMCCC_ARCH_WORKAROUND_1",
    2: "SMCCC_ARCH_WORKAROUND_2",
    3: "SMCCC_ARCH_WORKAROUND_3",
}
FW_FEAT_BMAP_REGS = {
    0: "STD_BMAP",
    1: "STD_HYP_BMAP",
    2: "VENDOR_HYP_BMAP",
    3: "VENDOR_HYP_BMAP_2",
}


def _core_offsets() -> Dict[str, Tuple[int, int]]:
    """Byte offset and size of each field of struct kvm_regs (arm64).

    struct kvm_regs { struct user_pt_regs regs (x0-x30, sp, pc, pstate);
    u64 sp_el1; u64 elr_el1; u64 spsr[5]; struct user_fpsimd_state fp_regs; }
    fp_regs is 16-byte aligned (it holds __uint128_t vregs[32]) and starts at
    336, not 328: cffi cannot declare __int128, so this table stands in for the
    struct and tests/host/test_uapi_probe.py checks it against the header.
    """
    t: Dict[str, Tuple[int, int]] = {}
    for i in range(31):
        t[f"X{i}"] = (8 * i, 8)
    t["SP"] = (248, 8)
    t["PC"] = (256, 8)
    t["PSTATE"] = (264, 8)
    t["SP_EL1"] = (272, 8)
    t["ELR_EL1"] = (280, 8)
    for i, n in enumerate(("SPSR_EL1", "SPSR_ABT", "SPSR_UND", "SPSR_IRQ", "SPSR_FIQ")):
        t[n] = (288 + 8 * i, 8)
    for i in range(32):
        t[f"V{i}"] = (336 + 16 * i, 16)
    t["FPSR"] = (848, 4)
    t["FPCR"] = (852, 4)
    return t


CORE_OFFSETS: Dict[str, Tuple[int, int]] = _core_offsets()
CORE_BY_OFFSET: Dict[int, str] = {off: name for name, (off, _) in CORE_OFFSETS.items()}
KVM_REGS_SIZE = 864  # sizeof(struct kvm_regs); checked by the probe

_SIZE_CODE = {1: SIZE_U8, 2: SIZE_U16, 4: SIZE_U32, 8: SIZE_U64, 16: SIZE_U128,
              32: SIZE_U256, 64: SIZE_U512, 128: SIZE_U1024, 256: SIZE_U2048}


def _make(size_code: int, coproc: int, low: int) -> int:
    return KVM_REG_ARM64 | (size_code << SIZE_SHIFT) | (coproc << COPROC_SHIFT) | low


def size_of(reg_id: int) -> int:
    """Bytes of the ONE_REG buffer for this id (2**size field)."""
    return 1 << ((reg_id & SIZE_MASK) >> SIZE_SHIFT)


def coproc_of(reg_id: int) -> int:
    return (reg_id & COPROC_MASK) >> COPROC_SHIFT


# ---- constructors ------------------------------------------------------------

def core(name: str) -> int:
    off, size = CORE_OFFSETS[name.upper()]
    return _make(_SIZE_CODE[size], COPROC_CORE, off // 4)


def sysreg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    for v, bits in ((op0, 2), (op1, 3), (crn, 4), (crm, 4), (op2, 3)):
        if not 0 <= v < (1 << bits):
            raise ValueError(f"sysreg field {v} does not fit in {bits} bits")
    return _make(SIZE_U64, COPROC_SYSREG,
                 (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2)


def sysreg_named(name: str) -> int:
    from . import sysregs

    return sysreg(*sysregs.encoding_of(name))


# The guest's counters (virtual, physical): what a pause hides and a restore's
# clock policy moves (KVM exposes them as ONE_REG sysregs; writing one sets the
# VM's counter offset).
GUEST_COUNTERS = (0x603000000013df1a, 0x603000000013df01)  # CNTVCT_EL0, CNTPCT_EL0
# The guest's timers' control registers (virtual, physical): 0 disables a timer.
TIMER_CTLS = (0x603000000013df19, 0x603000000013df11)  # CNTV_CTL_EL0, CNTP_CTL_EL0


def fw(n: int) -> int:
    return _make(SIZE_U64, COPROC_FW, n & 0xFFFF)


FW_PSCI_VERSION = 0x6030000000140000  # fw(0), KVM_REG_ARM_PSCI_VERSION


def fw_feat_bmap(n: int) -> int:
    return _make(SIZE_U64, COPROC_FW_FEAT_BMAP, n & 0xFFFF)


def demux_ccsidr(level_sel: int) -> int:
    if not 0 <= level_sel < 256:
        raise ValueError("CSSELR value must fit in 8 bits")
    return _make(SIZE_U32, COPROC_DEMUX, (DEMUX_ID_CCSIDR << 8) | level_sel)


def _check(n: int, limit: int, what: str) -> None:
    if not 0 <= n < limit:
        raise ValueError(f"{what} {n} out of range 0..{limit - 1}")


def sve_z(n: int, slice_: int = 0) -> int:
    _check(n, 32, "Z register"); _check(slice_, MAX_SLICES, "slice")
    return _make(SIZE_U2048, COPROC_SVE, SVE_ZREG_BASE | (n << 5) | slice_)


def sve_p(n: int, slice_: int = 0) -> int:
    _check(n, 16, "P register"); _check(slice_, MAX_SLICES, "slice")
    return _make(SIZE_U256, COPROC_SVE, SVE_PREG_BASE | (n << 5) | slice_)


def sve_ffr(slice_: int = 0) -> int:
    _check(slice_, MAX_SLICES, "slice")
    return _make(SIZE_U256, COPROC_SVE, SVE_FFR_BASE | slice_)


SVE_VLS = _make(SIZE_U512, COPROC_SVE, SVE_VLS_LOW)


def sme_za_row(n: int, slice_: int = 0) -> int:
    _check(n, 256, "ZA row"); _check(slice_, MAX_SLICES, "slice")
    return _make(SIZE_U2048, COPROC_SME, (n << 5) | slice_)


def sme_zt(n: int = 0) -> int:
    _check(n, 32, "ZT register")
    return _make(SIZE_U512, COPROC_SME, SME_ZT_BASE | n)


SME_VLS = _make(SIZE_U512, COPROC_SME, SME_VLS_LOW)

# Frequently used system registers.
SVCR = 0x603000000013da12  # SVCR
SMCR_EL1 = 0x603000000013c096  # SMCR_EL1
SMPRI_EL1 = 0x603000000013c094  # SMPRI_EL1
SMIDR_EL1 = 0x603000000013c806  # SMIDR_EL1
TPIDR2_EL0 = 0x603000000013de85  # TPIDR2_EL0
TPIDR_EL0 = 0x603000000013de82  # TPIDR_EL0
FPMR = 0x603000000013da22  # FPMR
ZCR_EL1 = 0x603000000013c090  # ZCR_EL1
ID_AA64PFR0_EL1 = 0x603000000013c020  # ID_AA64PFR0_EL1
ID_AA64PFR1_EL1 = 0x603000000013c021  # ID_AA64PFR1_EL1
ID_AA64SMFR0_EL1 = 0x603000000013c025  # ID_AA64SMFR0_EL1
ID_AA64ZFR0_EL1 = 0x603000000013c024  # ID_AA64ZFR0_EL1
MPIDR_EL1 = 0x603000000013c005  # MPIDR_EL1
CNTFRQ_EL0 = 0x603000000013df00  # CNTFRQ_EL0


# ---- decoding ----------------------------------------------------------------

if TYPE_CHECKING:
    class Decoded(NamedTuple):
        kind: str
        name: str
        size: int
        index: Optional[int] = None  # type: ignore[assignment]  # the field shadows tuple.index on purpose
        slice: Optional[int] = None
        encoding: Optional[Tuple[int, int, int, int, int]] = None
        known: bool = True
else:  # the same class without importing typing (start-up time)
    Decoded = tuple_record("Decoded", "kind name size index slice encoding known", defaults=(None, None, None, True),
                           module=__name__)
Decoded.__doc__ = """What an id means. ``kind`` is one of core, sysreg, demux, fw,
fw_feat_bmap, sve_z, sve_p, sve_ffr, sve_vls, sme_za, sme_zt, sme_vls,
unknown. ``index`` is the register number (Z3 -> 3, ZA row 12 -> 12, core
byte offset for core), ``slice`` the SVE/SME slice, ``encoding`` the
(op0, op1, CRn, CRm, op2) of a system register."""


def _slice_suffix(s: int) -> str:
    return "" if s == 0 else f"[slice {s}]"


def decode(reg_id: int) -> Decoded:
    """Decode any 64-bit id. Never raises; unknown ids come back with
    ``kind='unknown'`` and ``known=False``."""
    reg_id &= 0xFFFFFFFFFFFFFFFF
    size = size_of(reg_id)
    if reg_id & ARCH_MASK != KVM_REG_ARM64 or reg_id & 0x000FFFFFF0000000:
        return Decoded("unknown", f"UNKNOWN_{reg_id:#018x}", size, known=False)
    cp = coproc_of(reg_id)
    low = reg_id & 0xFFFF
    unknown = Decoded("unknown", f"UNKNOWN_{reg_id:#018x}", size, known=False)

    if cp == COPROC_CORE:
        off = low * 4
        name = CORE_BY_OFFSET.get(off)
        if name is None or CORE_OFFSETS[name][1] != size:
            return unknown
        return Decoded("core", name, size, index=off)
    if cp == COPROC_SYSREG:
        if size != 8 or low != reg_id & 0xFFFF or reg_id & 0xFFFF0000 != COPROC_SYSREG << 16:
            return unknown
        enc = ((low >> 14) & 3, (low >> 11) & 7, (low >> 7) & 15, (low >> 3) & 15, low & 7)
        from . import sysregs

        name = sysregs.name_of(enc)
        known = enc in sysregs.BY_ENCODING or sysregs.is_id_space(enc)
        return Decoded("sysreg", name, size, encoding=enc, known=known)
    if cp == COPROC_DEMUX:
        if (low >> 8) == DEMUX_ID_CCSIDR and size == 4:
            return Decoded("demux", f"CCSIDR[{low & 0xFF}]", size, index=low & 0xFF)
        return unknown
    if cp == COPROC_FW:
        if size == 8 and low in FW_REGS:
            return Decoded("fw", FW_REGS[low], size, index=low)
        return unknown
    if cp == COPROC_FW_FEAT_BMAP:
        if size == 8 and low in FW_FEAT_BMAP_REGS:
            return Decoded("fw_feat_bmap", FW_FEAT_BMAP_REGS[low], size, index=low)
        return unknown
    if cp == COPROC_SVE:
        if low == SVE_VLS_LOW:
            return Decoded("sve_vls", "SVE_VLS", size) if size == 64 else unknown
        n, s = (low >> 5) & 0x1F, low & 0x1F
        if low < SVE_PREG_BASE and size == 256:
            return Decoded("sve_z", f"Z{n}{_slice_suffix(s)}", size, index=n, slice=s)
        if SVE_PREG_BASE <= low < SVE_PREG_BASE + 16 * 32 and size == 32:
            return Decoded("sve_p", f"P{n}{_slice_suffix(s)}", size, index=n, slice=s)
        if SVE_FFR_BASE <= low < SVE_FFR_BASE + 32 and size == 32:
            return Decoded("sve_ffr", f"FFR{_slice_suffix(s)}", size, index=0, slice=s)
        return unknown
    if cp == COPROC_SME:
        if low == SME_VLS_LOW:
            return Decoded("sme_vls", "SME_VLS", size) if size == 64 else unknown
        if size == 256 and low < (256 << 5):
            n, s = low >> 5, low & 0x1F
            return Decoded("sme_za", f"ZA[{n}]{_slice_suffix(s)}", size, index=n, slice=s)
        if size == 64 and SME_ZT_BASE <= low < SME_ZT_BASE + 32:
            n = low - SME_ZT_BASE
            return Decoded("sme_zt", f"ZT{n}", size, index=n)
        return unknown
    return unknown


def name(reg_id: int) -> str:
    return decode(reg_id).name


# compiled on first use (re.fullmatch caches them): ``re`` stays out of pyvmm run's start-up
_NAME_PATTERNS = [
    (r"Z(\d+)(?:\[SLICE (\d+)\])?", lambda m: sve_z(int(m[1]), int(m[2] or 0))),
    (r"P(\d+)(?:\[SLICE (\d+)\])?", lambda m: sve_p(int(m[1]), int(m[2] or 0))),
    (r"FFR(?:\[SLICE (\d+)\])?", lambda m: sve_ffr(int(m[1] or 0))),
    (r"ZA\[(\d+)\](?:\[SLICE (\d+)\])?", lambda m: sme_za_row(int(m[1]), int(m[2] or 0))),
    (r"ZT(\d+)", lambda m: sme_zt(int(m[1]))),
    (r"CCSIDR\[(\d+)\]", lambda m: demux_ccsidr(int(m[1]))),
    (r"UNKNOWN_0X([0-9A-F]{16})", lambda m: int(m[1], 16)),
]


def parse(text: str) -> int:
    """Inverse of :func:`name`: ``"ZA[12]"``, ``"SVCR"``, ``"X3"``, ``"Z3"``,
    ``"S3_0_C15_C2_0"``, or a number (``0x6030...``)."""
    t = text.strip().upper()
    if t.startswith("0X") and len(t) > 2:
        return int(t, 16)
    if t in CORE_OFFSETS:
        return core(t)
    if t == "SVE_VLS":
        return SVE_VLS
    if t == "SME_VLS":
        return SME_VLS
    for k, v in FW_REGS.items():
        if t == v:
            return fw(k)
    for k, v in FW_FEAT_BMAP_REGS.items():
        if t == v:
            return fw_feat_bmap(k)
    import re

    for pattern, build in _NAME_PATTERNS:
        m = re.fullmatch(pattern, t)
        if m:
            return build(m)
    try:
        return sysreg_named(t)
    except KeyError:
        raise KeyError(f"unknown register name {text!r} (try e.g. X0, V3, Z3, P1, FFR, "
                       f"ZA[12], ZT0, SVCR, SCTLR_EL1, SVE_VLS, SME_VLS)") from None


# ---- vector-length bitmaps (SVE_VLS / SME_VLS, ABI page §4) --------------------

def vls_decode(buf: bytes) -> list:
    """VQs (1 VQ = 128 bits) present in an 8 x u64 VLS bitmap: VQ q is bit
    (q-1) % 64 of word (q-1) // 64."""
    if len(buf) != 8 * VLS_WORDS:
        raise ValueError(f"VLS bitmap must be {8 * VLS_WORDS} bytes, got {len(buf)}")
    value = int.from_bytes(buf, "little")
    return [q + 1 for q in range(64 * VLS_WORDS) if value >> q & 1]


def vls_encode(vqs) -> bytes:
    value = 0
    for q in vqs:
        if not 1 <= q <= 64 * VLS_WORDS:
            raise ValueError(f"VQ {q} out of range 1..{64 * VLS_WORDS}")
        value |= 1 << (q - 1)
    return value.to_bytes(8 * VLS_WORDS, "little")


def vls_cut(vqs, max_vq: int) -> list:
    """The set KVM accepts when limiting to ``max_vq``: the host's VQs up to it."""
    return [q for q in vqs if q <= max_vq]

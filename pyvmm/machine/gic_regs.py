"""The vGICv3's registers as KVM's device attributes see them: offsets, the
saved banks, CPU interface sysregs and the attr encoders (GICv3 architecture
specification, chapter 12; Documentation/virt/kvm/devices/arm-vgic-v3.rst)."""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Dict, Optional, Tuple

from .._ffi import const
from ..arm64 import regs, sysregs
from ..boot.layout import NR_IRQS  # noqa: F401 (the vGIC's size, part of the machine's layout)

# ---- vGICv3 registers (GICv3 architecture specification, chapter 12) ---------
# Distributor, offsets from GICD_BASE. Per-interrupt banks hold bits_per_irq
# bits per INTID, from INTID 0; the first 32 INTIDs' part is RAZ/WI here (the
# private interrupts live in each redistributor's SGI frame).
GICD_CTLR = 0x0000
GICD_TYPER = 0x0004
GICD_TYPER_A3V = 1 << 24  # affinity level 3 supported (else GICD_IROUTER<n>'s upper half is RAZ/WI)
GICD_IIDR = 0x0008
GICD_IGROUPR = 0x0080
GICD_ISENABLER = 0x0100
GICD_ICENABLER = 0x0180
GICD_ISPENDR = 0x0200
GICD_ICPENDR = 0x0280
GICD_ISACTIVER = 0x0300
GICD_ICACTIVER = 0x0380
GICD_IPRIORITYR = 0x0400
GICD_ICFGR = 0x0C00
GICD_IGRPMODR = 0x0D00
GICD_IROUTER = 0x6000  # 64 bits per INTID
# Redistributor: RD_base frame, then the SGI_base frame 64 KiB above it.
GICR_CTLR = 0x0000
GICR_TYPER = 0x0008  # 64 bits
GICR_TYPER_PLPIS = 1 << 0
GICR_PROPBASER = 0x0070  # 64 bits
GICR_PENDBASER = 0x0078  # 64 bits
GICR_SGI_BASE = 0x1_0000
GICR_IGROUPR0 = GICR_SGI_BASE + 0x0080
GICR_ISENABLER0 = GICR_SGI_BASE + 0x0100
GICR_ICENABLER0 = GICR_SGI_BASE + 0x0180
GICR_ISPENDR0 = GICR_SGI_BASE + 0x0200
GICR_ICPENDR0 = GICR_SGI_BASE + 0x0280
GICR_ISACTIVER0 = GICR_SGI_BASE + 0x0300
GICR_ICACTIVER0 = GICR_SGI_BASE + 0x0380
GICR_IPRIORITYR0 = GICR_SGI_BASE + 0x0400  # 8 words
GICR_ICFGR0 = GICR_SGI_BASE + 0x0C00  # ICFGR0 (SGIs, read-only) and ICFGR1 (PPIs)
GICR_IGRPMODR0 = GICR_SGI_BASE + 0x0D00
# ITS control frame, offsets from ITS_BASE (GRP_ITS_REGS: every value a __u64)
GITS_CTLR = 0x0000
GITS_CTLR_ENABLED = 1 << 0
GITS_IIDR = 0x0004
GITS_CBASER = 0x0080  # 64 bits
GITS_CWRITER = 0x0088  # 64 bits
GITS_CREADR = 0x0090  # 64 bits
GITS_BASER = 0x0100  # GITS_BASER<n> at 0x0100 + 8n, n = 0..7, 64 bits each
GITS_BASERS = 8

# (saved name, set-register offset, clear-register offset or None, bits per INTID)
# KVM implements IGRPMODR as RAZ/WI (no Secure state); saved all the same.
DIST_BANKS: Tuple[Tuple[str, int, Optional[int], int], ...] = (
    ("IGROUPR", GICD_IGROUPR, None, 1),
    ("ISENABLER", GICD_ISENABLER, GICD_ICENABLER, 1),
    ("ISPENDR", GICD_ISPENDR, None, 1),  # the latch; see _restore
    ("ISACTIVER", GICD_ISACTIVER, GICD_ICACTIVER, 1),
    ("IPRIORITYR", GICD_IPRIORITYR, None, 8),
    ("ICFGR", GICD_ICFGR, None, 2),
    ("IGRPMODR", GICD_IGRPMODR, None, 1),
)
# (saved name, set offset, clear offset or None, number of 32-bit words)
REDIST_BANKS: Tuple[Tuple[str, int, Optional[int], int], ...] = (
    ("IGROUPR0", GICR_IGROUPR0, None, 1),
    ("ISENABLER0", GICR_ISENABLER0, GICR_ICENABLER0, 1),
    ("ISPENDR0", GICR_ISPENDR0, None, 1),
    ("ISACTIVER0", GICR_ISACTIVER0, GICR_ICACTIVER0, 1),
    ("IPRIORITYR", GICR_IPRIORITYR0, None, 8),
    ("ICFGR", GICR_ICFGR0, None, 2),
    ("IGRPMODR0", GICR_IGRPMODR0, None, 1),
)
DIST_BANK_BY_NAME = {n: (s, c, b) for n, s, c, b in DIST_BANKS}
REDIST_BANK_BY_NAME = {n: (s, c, w) for n, s, c, w in REDIST_BANKS}

# CPU interface system registers (encodings in pyvmm.arm64.sysregs).
ICC_SYSREGS: Dict[str, Tuple[int, int, int, int, int]] = {
    name: sysregs.encoding_of(name)
    for name in ("ICC_PMR_EL1", "ICC_BPR0_EL1", *(f"ICC_AP0R{n}_EL1" for n in range(4)),
                 *(f"ICC_AP1R{n}_EL1" for n in range(4)), "ICC_BPR1_EL1", "ICC_CTLR_EL1", "ICC_SRE_EL1",
                 "ICC_IGRPEN0_EL1", "ICC_IGRPEN1_EL1")
}
CPU_SYSREGS_FIXED = ("ICC_SRE_EL1", "ICC_CTLR_EL1", "ICC_PMR_EL1", "ICC_BPR0_EL1", "ICC_BPR1_EL1",
                     "ICC_IGRPEN0_EL1", "ICC_IGRPEN1_EL1")
ICC_CTLR_PRIBITS_SHIFT = 8  # ICC_CTLR_EL1.PRIbits [10:8] = implemented priority bits - 1

STATE_FORMAT = "pyvmm-vgicv3/1"

GRP_DIST = const("KVM_DEV_ARM_VGIC_GRP_DIST_REGS")
GRP_REDIST = const("KVM_DEV_ARM_VGIC_GRP_REDIST_REGS")
GRP_CPU_SYSREGS = const("KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS")
GRP_LEVEL_INFO = const("KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO")


def mpidr_affinity(mpidr: int) -> int:
    """The 32-bit affinity the vGIC attrs carry, Aff3.Aff2.Aff1.Aff0 (one byte
    each), from an MPIDR_EL1 value (Aff0 [7:0], Aff1 [15:8], Aff2 [23:16],
    Aff3 [39:32])."""
    return (mpidr & 0xFFFFFF) | (((mpidr >> 32) & 0xFF) << 24)


def _with_mpidr(mpidr: int, low: int) -> int:
    return (mpidr_affinity(mpidr) << const("KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT")) | low


def dist_attr(offset: int) -> int:
    """GRP_DIST_REGS attr: the offset (the distributor is not banked, so no MPIDR)."""
    return offset << const("KVM_DEV_ARM_VGIC_OFFSET_SHIFT")


def redist_attr(mpidr: int, offset: int) -> int:
    """GRP_REDIST_REGS attr: the vCPU's affinity in [63:32], the offset from
    its RD_base in [31:0] (SGI_base registers at 64 KiB and up)."""
    return _with_mpidr(mpidr, offset << const("KVM_DEV_ARM_VGIC_OFFSET_SHIFT"))


def sysreg_instr(name: str) -> int:
    """The CPU_SYSREGS instr field of a CPU interface register: the low 16
    bits of its ONE_REG sysreg id (Op0 [15:14], Op1 [13:11], CRn [10:7],
    CRm [6:3], Op2 [2:0])."""
    return regs.sysreg(*ICC_SYSREGS[name]) & const("KVM_DEV_ARM_VGIC_SYSREG_INSTR_MASK")


def sysreg_attr(mpidr: int, name: str) -> int:
    """GRP_CPU_SYSREGS attr: affinity in [63:32], instr in [15:0] (64-bit values)."""
    return _with_mpidr(mpidr, sysreg_instr(name))


def line_level_attr(mpidr: int, intid: int) -> int:
    """GRP_LEVEL_INFO attr for the 32 interrupts from ``intid`` (a multiple of
    32): affinity in [63:32], info VGIC_LEVEL_INFO_LINE_LEVEL in [31:10],
    vINTID in [9:0]. PPIs are per vCPU; for SPIs any vCPU's affinity will do."""
    if intid % 32 or not 0 <= intid <= const("KVM_DEV_ARM_VGIC_LINE_LEVEL_INTID_MASK"):
        raise ValueError(f"LEVEL_INFO vINTID {intid} is not a multiple of 32 below 1024")
    info = const("VGIC_LEVEL_INFO_LINE_LEVEL") << const("KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT")
    return _with_mpidr(mpidr, info | intid)


def apr_count(icc_ctlr: int) -> int:
    """How many ICC_AP0Rn_EL1 (and AP1Rn) exist for this ICC_CTLR_EL1.PRIbits:
    1 for 5 priority bits or fewer, 2 for 6, 4 for 7 (arm-vgic-v3.rst)."""
    pri_bits = ((icc_ctlr >> ICC_CTLR_PRIBITS_SHIFT) & 7) + 1
    return 4 if pri_bits >= 7 else 2 if pri_bits == 6 else 1


def spi_words(nr_irqs: int, bits_per_irq: int) -> range:
    """Word indices of a distributor bank covering INTIDs 32..nr_irqs-1."""
    return range(bits_per_irq, nr_irqs * bits_per_irq // 32)

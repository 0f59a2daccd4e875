"""The guest physical memory map (fixed) and where boot payloads go in RAM.

::

    0x0000_0000 +---------------------------+
                |   (nothing)               |
    0x0800_0000 | GICv3 distributor  64 KiB |
    0x0808_0000 | GICv3 ITS         128 KiB |  only with a PCI device (MSI-X)
    0x080A_0000 | GICv3 redistributors      |  128 KiB per vCPU (RD + SGI frames),
                |                           |  room for 123 vCPUs
    0x0900_0000 | PL011 UART          4 KiB |  SPI 1   (INTID 33)
    0x0A00_0000 | virtio-mmio slot 0  512 B |  SPI 16  (INTID 48)
    0x0A00_0200 | virtio-mmio slot 1  512 B |  SPI 17  ... 32 slots
    0x1000_0000 | PCI MMIO window (32-bit)  |  BARs, placed by the guest
    0x3F00_0000 | PCI ECAM, bus 0     1 MiB |  only with a PCI device
    0x4000_0000 +---------------------------+
                | RAM (--mem)               |  kernel at RAM base + text_offset;
                |   ...                     |  initrd at RAM base + min(RAM/2, 128 MiB)
                | initrd                    |  (or just above the kernel if that is higher);
                | DTB (<= 2 MiB)            |  DTB at the next 2 MiB boundary after it
                |   ...                     |
                +---------------------------+

The addresses follow QEMU's ``virt`` machine where they overlap, so the same
earlycon and DT habits work, and so does the placement of initrd and DTB
(QEMU's hw/arm/boot.c does the same for a Linux Image). That placement
matters to small guests: the free RAM is split in two around the initrd,
and Debian's kernel reserves its 64 MiB CMA area only where it finds that
much contiguous free RAM; with the initrd and DTB at the top of a 128 MiB
guest it found it, and init ran out of memory. When the QEMU placement does
not fit (a large initrd in little RAM), initrd and DTB go at the top of RAM
instead. With ``--firmware`` the binary goes at the RAM base instead of a
kernel and is entered there with the MMU off; the DTB is in the top 2 MiB.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Optional

from .._record import record
from ..errors import UsageProblem

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

GICD_BASE, GICD_SIZE = 0x0800_0000, 0x1_0000
GICR_BASE = 0x080A_0000
GICR_STRIDE = 0x2_0000  # RD_base + SGI_base frames, 64 KiB each (GICv3 arch. spec 12.10)
GICR_REGION_SIZE = 0x00F6_0000
MAX_VCPUS = GICR_REGION_SIZE // GICR_STRIDE  # 123

# The vGIC ITS (two 64 KiB frames: control, then GITS_TRANSLATER's page),
# where QEMU's virt machine has it; only a machine with a PCI device has one.
ITS_BASE, ITS_SIZE = 0x0808_0000, 0x2_0000
ITS_TRANSLATER = ITS_BASE + 0x1_0040  # GITS_TRANSLATER: the MSI doorbell (GICv3 arch. spec 12.19)

# The generic PCIe host bridge (pci-host-ecam-generic): bus 0's ECAM config
# space (1 MiB: 32 devices x 8 functions x 4 KiB) and a 32-bit window for
# the BARs the guest assigns, below the ECAM and above the virtio-mmio slots.
PCI_ECAM_BASE, PCI_ECAM_SIZE = 0x3F00_0000, 0x10_0000
PCI_MMIO_BASE, PCI_MMIO_SIZE = 0x1000_0000, 0x2F00_0000

UART_BASE, UART_SIZE, UART_SPI = 0x0900_0000, 0x1000, 1

VIRTIO_BASE, VIRTIO_SLOT_SIZE, VIRTIO_SLOTS, VIRTIO_SPI_BASE = 0x0A00_0000, 0x200, 32, 16

RAM_BASE = 0x4000_0000
IPA_BITS = 40  # KVM's default IPA size
RAM_MAX = (1 << IPA_BITS) - RAM_BASE
RAM_ALIGN = 2 * MiB
RAM_MIN = 16 * MiB

DTB_MAX = 2 * MiB  # booting.rst: "must not exceed 2 megabytes"
INITRD_ALIGN = 4 * KiB
# booting.rst: the initrd must lie in a 1 GB aligned window of up to 32 GB
# that also covers the kernel Image; the kernel sits at the RAM base.
INITRD_WINDOW = 32 * GiB
QEMU_INITRD_OFFSET = 128 * MiB  # the initrd at min(RAM/2, this) from the RAM base, as QEMU places it

# PPIs of the generic timer (INTID = 16 + n), as the DT binding numbers them.
TIMER_PPI_SEC, TIMER_PPI_PHYS, TIMER_PPI_VIRT, TIMER_PPI_HYP = 13, 14, 11, 10
PMU_PPI = 7  # the PMU overflow interrupt (INTID 23), where QEMU's virt board puts it
SPI_BASE_INTID = 32
NR_IRQS = 128  # the vGIC's interrupts: 32 private + 96 SPIs (UART SPI 1, 32 virtio slots SPI 16..47)


def virtio_slot(n: int):
    """(base address, SPI number) of virtio-mmio slot ``n``."""
    if not 0 <= n < VIRTIO_SLOTS:
        raise UsageProblem(f"at most {VIRTIO_SLOTS} virtio devices")
    return VIRTIO_BASE + n * VIRTIO_SLOT_SIZE, VIRTIO_SPI_BASE + n


def gicr_size(ncpus: int) -> int:
    return ncpus * GICR_STRIDE


_UNITS = {"": MiB, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1024`` (MiB, as kvmtool's -m) -> bytes: digits, a
    unit k/m/g/t (any case, spaces before it allowed) and b or ib after it.
    (Read without ``re``, which ``pyvmm run`` does not load.)"""
    t = str(text).strip().lower()
    for suffix in ("ib", "b"):
        if t.endswith(suffix):
            t = t[:-len(suffix)]
            break
    unit = t[-1:] if t[-1:] in ("k", "m", "g", "t") else ""
    digits = t[:len(t) - len(unit)].rstrip()
    if not (digits.isdecimal() and digits.isascii()):
        raise UsageProblem(f"memory size {text!r} not understood", "use e.g. 512M or 2G")
    return int(digits) * _UNITS[unit]


def check_ram(size: int) -> None:
    if size < RAM_MIN:
        raise UsageProblem(f"--mem {fmt_size(size)} is too small", f"pyvmm needs at least {fmt_size(RAM_MIN)}")
    if size > RAM_MAX:
        raise UsageProblem(f"--mem {fmt_size(size)} does not fit in the {IPA_BITS}-bit guest address space",
                           f"at most {fmt_size(RAM_MAX)}")
    if size % RAM_ALIGN:
        raise UsageProblem(f"--mem {size} bytes is not a multiple of 2 MiB")


def fmt_size(n: int) -> str:
    for unit, div in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return f"{n}B"


@record(frozen=True)
class BootPlan:
    ram_size: int
    kernel_addr: int
    kernel_size: int
    initrd_addr: Optional[int]
    initrd_size: int
    dtb_addr: int

    @property
    def entry(self) -> int:
        return self.kernel_addr


def _overlap(a, alen, b, blen) -> bool:
    return a < b + blen and b < a + alen


def plan(ram_size: int, kernel_size: int, text_offset: int = 0, initrd_size: int = 0,
         has_initrd: bool = False, what: str = "kernel") -> BootPlan:
    """Place kernel (or firmware), initrd and DTB in RAM without overlap,
    or raise UsageProblem with the reason."""
    check_ram(ram_size)
    ram_end = RAM_BASE + ram_size
    kernel_addr = RAM_BASE + text_offset  # RAM_BASE is 2 MiB aligned
    top = min(ram_end, RAM_BASE + INITRD_WINDOW)
    dtb_addr = top - DTB_MAX
    if kernel_addr + kernel_size > dtb_addr:
        raise UsageProblem(f"the {what} needs {fmt_size_up(kernel_size)} of RAM from "
                           f"{kernel_addr:#x}; --mem {fmt_size(ram_size)} is too small",
                           f"use at least --mem {fmt_size_up(text_offset + kernel_size + DTB_MAX + RAM_ALIGN)}")
    initrd_addr = None
    if has_initrd and initrd_size > ram_size:
        raise UsageProblem(f"the initrd ({fmt_size_up(initrd_size)}) is larger than RAM "
                           f"(--mem {fmt_size(ram_size)})")
    if what == "kernel":
        # QEMU's placement (see the module docstring): the initrd (even an
        # empty one) from the middle of RAM, the DTB after it.
        start = _align_up(max(RAM_BASE + min(ram_size // 2, QEMU_INITRD_OFFSET), kernel_addr + kernel_size),
                          INITRD_ALIGN)
        dtb_qemu = _align_up(start + (initrd_size if has_initrd else 0), RAM_ALIGN)
        if dtb_qemu + DTB_MAX <= top:
            return BootPlan(ram_size, kernel_addr, kernel_size, start if has_initrd else None,
                            initrd_size if has_initrd else 0, dtb_qemu)
    if has_initrd:
        initrd_addr = (dtb_addr - initrd_size) // INITRD_ALIGN * INITRD_ALIGN
        if initrd_addr < kernel_addr + kernel_size:
            need = text_offset + kernel_size + initrd_size + DTB_MAX + INITRD_ALIGN
            raise UsageProblem(f"kernel ({fmt_size_up(kernel_size)}) and initrd ({fmt_size_up(initrd_size)}) "
                               f"do not fit in --mem {fmt_size(ram_size)}",
                               f"use at least --mem {fmt_size_up(need)}")
    p = BootPlan(ram_size, kernel_addr, kernel_size, initrd_addr, initrd_size, dtb_addr)
    assert not _overlap(p.kernel_addr, p.kernel_size, p.dtb_addr, DTB_MAX)
    assert p.initrd_addr is None or not _overlap(p.initrd_addr, p.initrd_size, p.kernel_addr, p.kernel_size)
    return p


def _align_up(n: int, align: int) -> int:
    return -(-n // align) * align


def fmt_size_up(n: int) -> str:
    """A size rounded up to whole MiB, for messages."""
    return f"{-(-n // MiB)}M"

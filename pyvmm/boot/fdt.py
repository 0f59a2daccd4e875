"""The flattened device tree pyvmm hands the guest, serialised here in pure
Python (no C extension, so installing pyvmm needs no compiler).

Devices describe themselves as :class:`Node` values (one per device, written
by the device's own module); :func:`build` lays out the fixed nodes (memory,
cpus, psci, timer, chosen) around them. Bindings followed:
Documentation/devicetree/bindings/ — arm/cpus.yaml, arm/psci.yaml,
interrupt-controller/arm,gic-v3.yaml, timer/arm,arch_timer.yaml,
serial/arm,pl011.yaml, virtio/mmio.yaml, chosen.yaml.

The blob layout is the Devicetree Specification's (v0.4, chapter 5): a
40-byte header, the memory reservation block (only its terminating entry),
the structure block (FDT_BEGIN_NODE / FDT_PROP / FDT_END_NODE tokens, every
item padded to 4 bytes, FDT_END last) and the strings block. Property names
are stored once; as libfdt's sequential writer does, the strings block holds
the newest name first and a name that is the tail of one already stored
shares its bytes, so the blob is byte for byte what libfdt's ``FdtSw``
writes (tests/host/test_fdt.py compares the two where pylibfdt is installed).
"""
from __future__ import annotations

import _struct as struct  # struct's C core, without the struct module (start-up time)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import List, Optional, Sequence, Tuple, Union

from .._record import field, record
from ..errors import UsageProblem
from . import layout

PHANDLE_GIC = 1
PHANDLE_APB_CLOCK = 2

# Interrupt specifier cells for arm,gic-v3 (#interrupt-cells = 3):
# <type number flags>, type 0 = SPI, 1 = PPI; flags 4 = level high, 1 = edge rising.
GIC_SPI, GIC_PPI = 0, 1
IRQ_TYPE_EDGE_RISING, IRQ_TYPE_LEVEL_HIGH = 1, 4

if TYPE_CHECKING:
    PropValue = Union[None, str, List[str], bytes, int, Tuple[int, ...]]


def cells(*values: int) -> bytes:
    """Big-endian 32-bit cells."""
    return b"".join(struct.pack(">I", v & 0xFFFFFFFF) for v in values)


def reg64(*pairs: Tuple[int, int]) -> bytes:
    """``reg`` for #address-cells = #size-cells = 2: (address, size) pairs."""
    return b"".join(struct.pack(">QQ", a, s) for a, s in pairs)


def irq(kind: int, number: int, flags: int = IRQ_TYPE_LEVEL_HIGH) -> bytes:
    return cells(kind, number, flags)


@record
class Node:
    name: str
    props: List[Tuple[str, PropValue]] = field(default_factory=list)
    children: List["Node"] = field(default_factory=list)

    def prop(self, name: str, value: PropValue = None) -> "Node":
        self.props.append((name, value))
        return self


def _encode(value: PropValue) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode() + b"\0"
    if isinstance(value, list):
        return b"".join(s.encode() + b"\0" for s in value)
    if isinstance(value, int):
        return cells(value)
    if isinstance(value, tuple):
        return cells(*value)
    return bytes(value)


FDT_MAGIC = 0xD00DFEED
FDT_VERSION, FDT_LAST_COMP_VERSION = 17, 16
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_END = 1, 2, 3, 9
_HEADER = struct.Struct(">10I")
_RSVMAP_END = bytes(16)  # the reservation block's terminating (0, 0) entry


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


class _Strings:
    """The strings block as libfdt's sequential writer builds it: a new name
    goes in front; a name already present (or the tail of one) is shared."""

    def __init__(self) -> None:
        self.table = b""

    def offset_from_end(self, name: str) -> int:
        """Where ``name`` is, counted back from the block's end (the block
        grows at the front, so only that distance is fixed while writing)."""
        key = name.encode() + b"\0"
        at = self.table.find(key)
        if at < 0:
            self.table = key + self.table
            at = 0
        return len(self.table) - at


def _structure(root: Node, strings: _Strings) -> List[Tuple[int, str, int, bytes]]:
    """The structure block as items (token, node name, property name's
    distance from the strings block's end, property value), in order; the
    distances become offsets in :func:`to_dtb`, once the block is complete."""
    items: List[Tuple[int, str, int, bytes]] = []

    def walk(node: Node) -> None:
        items.append((FDT_BEGIN_NODE, node.name, 0, b""))
        for name, value in node.props:
            items.append((FDT_PROP, "", strings.offset_from_end(name), _encode(value)))
        for child in node.children:
            walk(child)
        items.append((FDT_END_NODE, "", 0, b""))
    walk(root)
    items.append((FDT_END, "", 0, b""))
    return items


def to_dtb(root: Node) -> bytes:
    """The DTB of the tree under ``root`` (version 17, boot CPU 0, no memory reservations)."""
    strings = _Strings()
    items = _structure(root, strings)
    parts = []
    for token, node_name, from_end, value in items:
        parts.append(struct.pack(">I", token))
        if token == FDT_BEGIN_NODE:
            parts.append(_pad4(node_name.encode() + b"\0"))
        elif token == FDT_PROP:
            parts.append(struct.pack(">II", len(value), len(strings.table) - from_end))
            parts.append(_pad4(value))
    struct_block = b"".join(parts)
    off_rsvmap = _HEADER.size
    off_struct = off_rsvmap + len(_RSVMAP_END)
    off_strings = off_struct + len(struct_block)
    total = off_strings + len(strings.table)
    if total > layout.DTB_MAX:
        raise UsageProblem(f"the device tree is {total} bytes, above the 2 MiB the boot protocol allows")
    header = _HEADER.pack(FDT_MAGIC, total, off_struct, off_strings, off_rsvmap, FDT_VERSION,
                          FDT_LAST_COMP_VERSION, 0, len(strings.table), len(struct_block))
    return header + _RSVMAP_END + struct_block + strings.table


def cpus_node(mpidrs: Sequence[int]) -> Node:
    """cpu@N with reg = MPIDR affinity (Aff3..Aff0 with #address-cells = 2) and
    PSCI as enable-method (KVM implements PSCI; secondaries start powered off)."""
    cpus = Node("cpus").prop("#address-cells", 2).prop("#size-cells", 0)
    for mpidr in mpidrs:
        aff = (mpidr & 0xFFFFFF) | ((mpidr >> 32) & 0xFF) << 32
        cpus.children.append(
            Node(f"cpu@{aff:x}")
            .prop("device_type", "cpu")
            .prop("compatible", "arm,armv8")
            .prop("enable-method", "psci")
            .prop("reg", struct.pack(">Q", aff)))
    return cpus


def timer_node() -> Node:
    level = IRQ_TYPE_LEVEL_HIGH
    return (Node("timer")
            .prop("compatible", "arm,armv8-timer")
            .prop("interrupts", irq(GIC_PPI, layout.TIMER_PPI_SEC, level) + irq(GIC_PPI, layout.TIMER_PPI_PHYS, level)
                  + irq(GIC_PPI, layout.TIMER_PPI_VIRT, level) + irq(GIC_PPI, layout.TIMER_PPI_HYP, level))
            .prop("always-on"))


def pmu_node() -> Node:
    """The vCPUs' PMUv3 (KVM_ARM_VCPU_PMU_V3), its overflow interrupt a PPI."""
    return (Node("pmu")
            .prop("compatible", "arm,armv8-pmuv3")
            .prop("interrupts", irq(GIC_PPI, layout.PMU_PPI, IRQ_TYPE_LEVEL_HIGH)))


def psci_node() -> Node:
    # KVM_ARM_VCPU_PSCI_0_2: PSCI 0.2+ function ids, conduit HVC.
    return Node("psci").prop("compatible", ["arm,psci-1.0", "arm,psci-0.2"]).prop("method", "hvc")


def apb_clock_node() -> Node:
    """The fixed clock AMBA primecells (the PL011) need for apb_pclk/uartclk."""
    return (Node("apb-pclk")
            .prop("compatible", "fixed-clock")
            .prop("#clock-cells", 0)
            .prop("clock-frequency", 24_000_000)
            .prop("clock-output-names", "clk24mhz")
            .prop("phandle", PHANDLE_APB_CLOCK))


def build(*, ram_size: int, mpidrs: Sequence[int], gic: Node, devices: Sequence[Node],
          bootargs: str = "", initrd: Optional[Tuple[int, int]] = None,
          stdout_path: Optional[str] = None, pmu: bool = False) -> bytes:
    """The whole DTB. ``initrd`` is (start, end) guest physical addresses;
    ``pmu``: the vCPUs have a PMUv3 (a ``pmu`` node)."""
    root = (Node("")
            .prop("compatible", "linux,dummy-virt")
            .prop("model", "pyvmm")
            .prop("#address-cells", 2)
            .prop("#size-cells", 2)
            .prop("interrupt-parent", PHANDLE_GIC))
    chosen = Node("chosen").prop("bootargs", bootargs)
    if initrd is not None:
        chosen.prop("linux,initrd-start", struct.pack(">Q", initrd[0]))
        chosen.prop("linux,initrd-end", struct.pack(">Q", initrd[1]))
    if stdout_path:
        chosen.prop("stdout-path", stdout_path)
    memory = (Node(f"memory@{layout.RAM_BASE:x}")
              .prop("device_type", "memory")
              .prop("reg", reg64((layout.RAM_BASE, ram_size))))
    root.children += [chosen, memory, cpus_node(mpidrs), psci_node(), timer_node(), apb_clock_node(), gic]
    if pmu:
        root.children.append(pmu_node())
    root.children += list(devices)
    return to_dtb(root)

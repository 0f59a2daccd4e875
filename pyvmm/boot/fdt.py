"""The flattened device tree pyvmm hands the guest, written with pylibfdt
(the dtc project's Python binding of libfdt).

Devices describe themselves as :class:`Node` values (one per device, written
by the device's own module); :func:`build` lays out the fixed nodes (memory,
cpus, psci, timer, chosen) around them. Bindings followed:
Documentation/devicetree/bindings/ — arm/cpus.yaml, arm/psci.yaml,
interrupt-controller/arm,gic-v3.yaml, timer/arm,arch_timer.yaml,
serial/arm,pl011.yaml, virtio/mmio.yaml, chosen.yaml.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

from ..errors import HostUnsupported, UsageProblem
from . import layout

PHANDLE_GIC = 1
PHANDLE_APB_CLOCK = 2

# Interrupt specifier cells for arm,gic-v3 (#interrupt-cells = 3):
# <type number flags>, type 0 = SPI, 1 = PPI; flags 4 = level high, 1 = edge rising.
GIC_SPI, GIC_PPI = 0, 1
IRQ_TYPE_EDGE_RISING, IRQ_TYPE_LEVEL_HIGH = 1, 4

PropValue = Union[None, str, List[str], bytes, int, Tuple[int, ...]]


def cells(*values: int) -> bytes:
    """Big-endian 32-bit cells."""
    return b"".join(struct.pack(">I", v & 0xFFFFFFFF) for v in values)


def reg64(*pairs: Tuple[int, int]) -> bytes:
    """``reg`` for #address-cells = #size-cells = 2: (address, size) pairs."""
    return b"".join(struct.pack(">QQ", a, s) for a, s in pairs)


def irq(kind: int, number: int, flags: int = IRQ_TYPE_LEVEL_HIGH) -> bytes:
    return cells(kind, number, flags)


@dataclass
class Node:
    name: str
    props: List[Tuple[str, PropValue]] = field(default_factory=list)
    children: List["Node"] = field(default_factory=list)

    def prop(self, name: str, value: PropValue = None) -> "Node":
        self.props.append((name, value))
        return self


def _libfdt():
    try:
        import libfdt  # pylibfdt (PyPI) or python3-libfdt (Debian)
    except ImportError:
        raise HostUnsupported("pylibfdt is not installed (pyvmm writes device trees with it)",
                              "pip install pylibfdt (needs swig and a C compiler), "
                              "or apt install python3-libfdt") from None
    return libfdt


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


def _write(sw, node: Node) -> None:
    sw.begin_node(node.name)
    for name, value in node.props:
        sw.property(name, _encode(value))
    for child in node.children:
        _write(sw, child)
    sw.end_node()


def to_dtb(root: Node) -> bytes:
    libfdt = _libfdt()
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    _write(sw, root)
    fdt = sw.as_fdt()
    fdt.pack()
    blob = bytes(fdt.as_bytearray())
    if len(blob) > layout.DTB_MAX:
        raise UsageProblem(f"the device tree is {len(blob)} bytes, above the 2 MiB the boot protocol allows")
    return blob


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

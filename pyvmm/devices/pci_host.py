"""The generic PCIe host bridge's ECAM (PCI Express Base 4.0, 7.2.2; device
tree "pci-host-ecam-generic"): bus 0's configuration space as MMIO exits,
4 KiB per function at ``bus << 20 | device << 15 | function << 12``.
Configuration accesses are rare (enumeration, BAR and MSI-X set-up), so
Python serves them all. A function nobody occupies reads as all ones (the
"no device" vendor id 0xFFFF) and ignores writes.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Dict

from ..boot import fdt, layout
from .pci import ECAM_FUNCTION_SIZE

MAX_DEVICES = 32
PCI_RANGE_MEM32 = 0x0200_0000  # the ranges' phys.hi: 32-bit memory space (PCI bus binding)


def requester_id(device: int, function: int = 0, bus: int = 0) -> int:
    """The function's requester id (what an MSI is tagged with: the ITS device id)."""
    return bus << 8 | device << 3 | function


class PciHost:
    """Functions (anything with pci_read(offset, length) / pci_write(offset,
    data) over its 4 KiB) on bus 0, function 0 of device slots 0..31."""

    def __init__(self) -> None:
        self.functions: Dict[int, Any] = {}

    def add(self, function) -> int:
        """Put ``function`` in the next free slot; its device number."""
        for dev in range(MAX_DEVICES):
            if dev not in self.functions:
                self.functions[dev] = function
                return dev
        raise ValueError(f"at most {MAX_DEVICES} PCI devices")

    def _target(self, offset: int, length: int):
        if offset < 0 or length <= 0 or offset >> 20:  # bus 0 only
            return None, 0
        reg = offset & (ECAM_FUNCTION_SIZE - 1)
        if reg + length > ECAM_FUNCTION_SIZE or offset >> 12 & 7:  # across functions, or function > 0
            return None, 0
        return self.functions.get(offset >> 15 & 31), reg

    def read(self, offset: int, length: int) -> bytes:
        fn, reg = self._target(offset, length)
        if fn is None:
            return b"\xff" * max(length, 0)
        return fn.pci_read(reg, length)

    def write(self, offset: int, data: bytes) -> None:
        fn, reg = self._target(offset, len(data))
        if fn is not None:
            fn.pci_write(reg, data)

    def dt_node(self, msi_parent: int) -> fdt.Node:
        """The host bridge (pci/host-generic-pci.yaml): ECAM in ``reg``, bus 0
        only, one 32-bit memory window, MSIs to the ITS with phandle
        ``msi_parent`` (msi-map: requester id n is ITS device id n)."""
        return (fdt.Node(f"pcie@{layout.PCI_ECAM_BASE:x}")
                .prop("compatible", "pci-host-ecam-generic")
                .prop("device_type", "pci")
                .prop("#address-cells", 3)
                .prop("#size-cells", 2)
                .prop("bus-range", (0, 0))
                .prop("linux,pci-domain", 0)
                .prop("reg", fdt.reg64((layout.PCI_ECAM_BASE, layout.PCI_ECAM_SIZE)))
                .prop("ranges", fdt.cells(PCI_RANGE_MEM32, 0, layout.PCI_MMIO_BASE,
                                          layout.PCI_MMIO_BASE >> 32, layout.PCI_MMIO_BASE & 0xFFFF_FFFF,
                                          0, layout.PCI_MMIO_SIZE))
                .prop("msi-map", (0, msi_parent, 0, 0x1_0000))
                .prop("dma-coherent"))

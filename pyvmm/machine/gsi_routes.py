"""The VM's GSI routing table (KVM_SET_GSI_ROUTING) when MSI-X vectors are
routed through the vGIC ITS.

KVM_SET_GSI_ROUTING replaces the whole table, and on arm64 that table first
holds the vGIC's default routes, GSI n -> SPI n for every SPI
(virt/kvm/arm/vgic/vgic-irqfd.c sets them up at CTRL_INIT), which the
virtio-mmio devices' irqfds use. So the table written is always those
irqchip routes plus one MSI route per MSI-X vector the guest programmed, on
GSIs above the SPIs: address = GITS_TRANSLATER, data = the event id the
guest wrote into the table entry, flags KVM_MSI_VALID_DEVID, devid = the
function's requester id (bus << 8 | device << 3 | function), which the ITS
requires (KVM_CAP_MSI_DEVID). KVM re-resolves every irqfd on a routing
change, so a vector's irqfd follows its route.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Dict, List, Tuple

from .._ffi import const

# KVM's route limit on arm64 (KVM_MAX_IRQ_ROUTES, include/linux/kvm_host.h)
MAX_ROUTES = 4096


class GsiRoutes:
    """``nr_spis`` identity SPI routes and the MSI routes set on top;
    ``vm``: where :meth:`commit` writes them (anything with set_gsi_routing)."""

    def __init__(self, vm, nr_spis: int):
        self.vm = vm
        self.nr_spis = nr_spis
        self.next_gsi = nr_spis
        self.msis: Dict[int, Tuple[int, int, int]] = {}  # gsi -> (address, data, devid)

    def allocate(self) -> int:
        """A GSI for one MSI-X vector (no route until :meth:`set_msi`)."""
        if self.next_gsi >= MAX_ROUTES:
            raise ValueError(f"no GSI left for another MSI-X vector (KVM routes at most {MAX_ROUTES})")
        gsi, self.next_gsi = self.next_gsi, self.next_gsi + 1
        return gsi

    def set_msi(self, gsi: int, address: int, data: int, devid: int) -> bool:
        """Route ``gsi`` as this MSI; True when that changed the table."""
        if not self.nr_spis <= gsi < self.next_gsi:
            raise ValueError(f"GSI {gsi} was not allocated for an MSI")
        route = (address & 0xFFFF_FFFF_FFFF_FFFF, data & 0xFFFF_FFFF, devid & 0xFFFF_FFFF)
        if self.msis.get(gsi) == route:
            return False
        self.msis[gsi] = route
        return True

    def clear(self, gsi: int) -> bool:
        """No route for ``gsi`` (its vector is unprogrammed); True when that changed the table."""
        return self.msis.pop(gsi, None) is not None

    def entries(self) -> List[Tuple[int, int, int, int, int, int, int]]:
        """The table as :meth:`pyvmm.vm.Vm.set_gsi_routing` takes it."""
        irqchip, msi, valid_devid = const("KVM_IRQ_ROUTING_IRQCHIP"), const("KVM_IRQ_ROUTING_MSI"), \
            const("KVM_MSI_VALID_DEVID")
        out = [(n, irqchip, 0, 0, n, 0, 0) for n in range(self.nr_spis)]
        for gsi in sorted(self.msis):
            address, data, devid = self.msis[gsi]
            out.append((gsi, msi, valid_devid, address & 0xFFFF_FFFF, address >> 32, data, devid))
        return out

    def commit(self) -> None:
        self.vm.set_gsi_routing(self.entries())

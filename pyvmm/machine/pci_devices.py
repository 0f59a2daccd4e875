"""A machine's PCI side (opt-in: ``--net ...,transport=pci``): the vGIC ITS,
the GSI routing table, the generic host bridge's ECAM on the MMIO bus, and
per virtio-pci function its MSI-X vectors, queue kick eventfds and the
BAR0 mapping that follows the guest.

The guest assigns BAR0 from the host bridge's window (the device tree
gives Linux no firmware assignments to keep). Whenever the BAR's decoded
address changes (address written, memory decoding switched) the function
leaves the MMIO bus and its notify addresses lose their KVM_IOEVENTFDs;
an address wholly inside the window (layout.PCI_MMIO_*) then gets both
again. Anywhere else -- RAM, another device, the sizing pattern of all ones
-- the BAR decodes nothing: the guest cannot make pyvmm serve or watch an
address outside the window.

A machine with PCI devices is not snapshotted or migrated yet
(:data:`REFUSAL`): the ITS tables, the LPI state and the routes are not saved.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import List, Optional

    from ..devices.bus import Mapping, MmioBus
    from ..devices.io_thread import IoThread
    from ..devices.virtio_mmio import VirtioBackend

import os

from .._ffi import const
from ..boot import fdt, layout
from ..devices.bus import BusOverlap
from ..devices.io_thread import bound, eventfd
from ..devices.pci_host import PciHost, requester_id
from ..devices.virtio_pci import BAR_SIZE, NOTIFY, NOTIFY_MULTIPLIER, VirtioPci
from .gsi_routes import GsiRoutes
from .its import PHANDLE_ITS, VgicIts
from .msi_vectors import MsiVectors

REFUSAL = "a machine with PCI devices cannot be saved yet (its ITS tables, LPIs and MSI routes are not saved)"
NOTIFY_WIDTH = 2  # the driver writes the queue index as 16 bits (virtio 1.2, 4.1.5.2)


def in_window(address: int, size: int) -> bool:
    return layout.PCI_MMIO_BASE <= address and address + size <= layout.PCI_MMIO_BASE + layout.PCI_MMIO_SIZE


class _Function:
    """One virtio-pci function and what follows its BAR."""

    def __init__(self, transport: VirtioPci, vectors: MsiVectors, kicks: List[int], name: str):
        self.transport, self.vectors, self.kicks, self.name = transport, vectors, kicks, name
        self.mapping: Optional[Mapping] = None
        self.notify_base: Optional[int] = None


class PciDevices:
    """Built after the vGIC's CTRL_INIT (the ITS comes after it); ``nr_spis``:
    the vGIC's SPIs, whose default routes the table keeps."""

    def __init__(self, vm, bus: MmioBus, io: IoThread, nr_spis: int):
        self.vm, self.bus, self.io = vm, bus, io
        self.functions: List[_Function] = []
        self.its: Optional[VgicIts] = VgicIts(vm)
        self.routes = GsiRoutes(vm, nr_spis)
        self.host = PciHost()
        self._ecam = bus.register(layout.PCI_ECAM_BASE, layout.PCI_ECAM_SIZE, self.host, "pci ecam")

    def add_virtio(self, mem, backend: VirtioBackend, name: str) -> VirtioPci:
        """``backend`` as a virtio-pci function in the next device slot."""
        dev = len(self.host.functions)
        vectors = MsiVectors(self.vm, self.routes, backend.num_queues + 1, requester_id(dev))
        kicks: List[int] = []
        try:
            kicks = [eventfd() for _ in range(backend.num_queues)]
            fn: Optional[_Function] = None

            def moved(address: Optional[int]) -> None:
                if fn is not None:
                    self._move(fn, address)
            t = VirtioPci(mem, backend, vectors, moved)
            fn = _Function(t, vectors, kicks, name)
        except BaseException:
            vectors.close()
            for k in kicks:
                os.close(k)
            raise
        self.functions.append(fn)
        vectors.attach(t.msix)
        if self.host.add(t) != dev:
            raise AssertionError("PCI device slots out of step")
        if backend.kernel_queues:
            backend.attach_eventfds(kicks, -1, direct=True)  # each queue's call: its vector (queue_call)
        for i in range(backend.num_queues):
            if i not in backend.served_queues:
                self.io.add(kicks[i], bound(t.notify, i))
        return t

    def _move(self, fn: _Function, address: Optional[int]) -> None:
        """BAR0 of ``fn`` now decodes ``address`` (None: nothing); the transport's lock is held."""
        self._unmap(fn)
        if address is None or not in_window(address, BAR_SIZE):
            return
        try:
            fn.mapping = self.bus.register(address, BAR_SIZE, fn.transport, fn.name)
        except BusOverlap:
            return  # two BARs on top of each other: neither decodes the other's range
        fn.notify_base = address + NOTIFY
        for i, k in enumerate(fn.kicks):
            self.vm.ioeventfd(fn.notify_base + NOTIFY_MULTIPLIER * i, NOTIFY_WIDTH, k)

    def _unmap(self, fn: _Function) -> None:
        if fn.mapping is not None:
            self.bus.unregister(fn.mapping)
            fn.mapping = None
        if fn.notify_base is not None:
            base, fn.notify_base = fn.notify_base, None
            if self.vm.fd >= 0:
                for i, k in enumerate(fn.kicks):
                    try:
                        self.vm.ioeventfd(base + NOTIFY_MULTIPLIER * i, NOTIFY_WIDTH, k,
                                          flags=const("KVM_IOEVENTFD_FLAG_DEASSIGN"))
                    except OSError:
                        pass  # the VM's own close drops it anyway

    def dt_nodes(self) -> List[fdt.Node]:
        return [self.host.dt_node(PHANDLE_ITS)]

    def close(self) -> None:
        for fn in self.functions:
            self._unmap(fn)
            fn.vectors.close()
            for k in fn.kicks:
                os.close(k)
            fn.kicks = []
        self.functions = []
        if self.its is not None:
            self.its.close()
            self.its = None

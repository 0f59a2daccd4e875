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

Snapshot and migration (:meth:`PciDevices.save_state`, docs/snapshot-format.md
"pci"): the ITS's registers, its tables and the LPIs' pending bits flushed
into guest RAM first (:meth:`PciDevices.flush`), and each function's state
(pyvmm/devices/virtio_pci.py). A restore loads the functions with the other
devices (BAR0 mapped again, each vector's route and irqfd made again, a
vhost plane's call eventfd its vector's again) and the ITS once guest RAM
is in place (:meth:`PciDevices.restore_its`), then the functions' owed
messages are sent.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Dict, List, Optional

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
from ..errors import KvmError, SnapshotError
from .gsi_routes import GsiRoutes
from .its import PHANDLE_ITS, VgicIts, check_state as check_its_state
from .msi_vectors import MsiVectors

NOTIFY_WIDTH = 2  # the driver writes the queue index as 16 bits (virtio 1.2, 4.1.5.2)


STATE_VERSION = 1  # of the saved "pci" section (docs/snapshot-format.md)
_MAX_FUNCTIONS = 32  # pci_host.MAX_DEVICES


def check_state(state, what: str = "snapshot machine.devices.pci") -> Dict:
    """A saved "pci" section's shape checked (UsageProblem naming the field):
    the ITS registers, and per function its slot (strictly increasing),
    virtio device id and a state object (checked by
    :meth:`VirtioPci.load_state`). Returns the section with the ITS
    registers checked."""
    from ..devices.state import StateReader  # snapshot code loads it (start-up time)

    r = StateReader(what, state, ("its", "functions"), version=STATE_VERSION)
    its = check_its_state(r.state["its"], f"{what}.its")
    functions = r.list("functions")
    if len(functions) > _MAX_FUNCTIONS:
        raise r.fail(f"'functions' has {len(functions)} entries, more than the {_MAX_FUNCTIONS} device slots")
    last = -1
    for i, f in enumerate(functions):
        fr = r.nested("functions", ("slot", "device_id", "state"), index=i)
        slot = fr.int("slot", 0, _MAX_FUNCTIONS - 1)
        if slot <= last:
            raise fr.fail(f"'slot' {slot} does not follow the previous function's {last}")
        last = slot
        fr.uint("device_id", 32)
        fr.dict("state")
    return dict(state, its=its)


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
        self._its_state: Optional[Dict] = None  # the ITS registers of the state loaded last (restore_its)
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
        t.label = f"virtio-pci 00:{dev:02x}.0"
        vectors.attach(t.msix)
        if self.host.add(t) != dev:
            raise AssertionError("PCI device slots out of step")
        if backend.kernel_queues:
            backend.attach_eventfds(kicks, -1, direct=True)  # each queue's call: its vector (queue_call)
        for i in range(backend.num_queues):
            if i not in backend.served_queues:
                self.io.add_kick(kicks[i], bound(t.notify, i))
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

    # -- snapshot ------------------------------------------------------------------
    def flush(self, gic_device) -> None:
        """The ITS tables and LPI pending bits into guest RAM (vCPUs out of
        KVM_RUN): before guest RAM is saved or its last dirty pages sent."""
        if self.its is not None:
            self.its.flush(gic_device)

    def save_state(self) -> Dict:
        """The ITS registers and each function's state (after :meth:`flush`)."""
        if self.its is None:
            raise SnapshotError("the machine's ITS is closed")
        return {"version": STATE_VERSION, "its": self.its.registers(),
                "functions": [{"slot": i, "device_id": fn.transport.backend.device_id,
                               "state": fn.transport.save_state()} for i, fn in enumerate(self.functions)]}

    def load_state(self, state) -> None:
        """Load each function's saved state (with the other devices, before
        guest RAM) and keep the ITS registers for :meth:`restore_its`."""
        state = check_state(state)
        saved = state["functions"]
        if len(saved) != len(self.functions):
            raise SnapshotError(f"snapshot has {len(saved)} PCI functions, its configuration makes "
                                f"{len(self.functions)}")
        for i, (fn, s) in enumerate(zip(self.functions, saved)):
            if (s["slot"], s["device_id"]) != (i, fn.transport.backend.device_id):
                raise SnapshotError(f"snapshot PCI function {i} is device id {s['device_id']} in slot {s['slot']}, "
                                    f"the machine's is device id {fn.transport.backend.device_id} in slot {i}")
        for fn, s in zip(self.functions, saved):
            fn.transport.load_state(s["state"])
        self._its_state = state["its"]

    def restore_its(self) -> None:
        """The ITS of the state loaded last, once guest RAM (its tables, the
        LPI pending bits) and the vGIC's redistributors are in place."""
        state, self._its_state = self._its_state, None
        if state is None or self.its is None:
            return
        try:
            self.its.restore(state)
        except KvmError as e:
            raise SnapshotError(f"the vGIC ITS refused the saved state: {e}") from None

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

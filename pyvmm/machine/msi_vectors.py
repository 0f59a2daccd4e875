"""The MSI-X vectors of one PCI function as KVM delivers them: per vector an
eventfd, a GSI, and a KVM_IRQFD on that GSI while the vector may deliver.

The GSI's route (pyvmm/machine/gsi_routes.py) is the MSI the guest wrote
into the vector's table entry, tagged with the function's requester id as
the ITS device id; KVM injects it through the vGIC ITS as an LPI. Whoever
interrupts -- a vhost plane (the vector's eventfd is its call eventfd) or
the I/O thread for the queues Python serves -- only signals the eventfd: no
exit, no acknowledgement by register.

Masking (PCI 3.0, 6.8.3.4): while a vector may not deliver (MSI-X off, the
function or the vector masked) its irqfd is deassigned, so signals pile up
in the eventfd's counter: that is the vector's pending bit (the PBA reads
it). When it may deliver again, its route is brought up to date, the
counter is drained, the irqfd assigned, and a pending message sent once.
"""
from __future__ import annotations

import os
import select

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import List, Optional

    from ..devices.msix import Msix
    from .gsi_routes import GsiRoutes

from .._ffi import const
from ..devices.io_thread import drain, eventfd


class MsiVectors:
    """``n`` vectors of the function with requester id ``devid``, routed
    through ``routes`` on ``vm`` (anything with irqfd)."""

    def __init__(self, vm, routes: GsiRoutes, n: int, devid: int = 0):
        self.vm, self.routes, self.devid = vm, routes, devid
        self.msix: Optional[Msix] = None
        self.refused: Optional[str] = None  # the last vector change KVM refused
        self.fds: List[int] = []
        self.assigned = [False] * n
        try:
            for _ in range(n):
                self.fds.append(eventfd())
        except OSError:
            self.close()
            raise
        self.gsis = [routes.allocate() for _ in range(n)]

    def attach(self, msix: Msix) -> None:
        """The function's MSI-X state, which :meth:`changed` follows."""
        self.msix = msix

    def signal(self, v: int) -> None:
        os.eventfd_write(self.fds[v], 1)

    def fd(self, v: int) -> int:
        return self.fds[v]

    def pending(self, v: int) -> bool:
        """Vector ``v`` was signalled and has not delivered (it is masked)."""
        if not 0 <= v < len(self.fds) or self.assigned[v]:
            return False
        return bool(select.select([self.fds[v]], [], [], 0)[0])

    def changed(self, v: int) -> None:
        """Follow vector ``v``'s table entry and masks (the transport's lock is held)."""
        msix = self.msix
        if msix is None or not 0 <= v < len(self.fds):
            return
        fd, gsi = self.fds[v], self.gsis[v]
        try:
            if msix.may_deliver(v):
                address, data, _ = msix.entry(v)
                if self.routes.set_msi(gsi, address, data, self.devid):
                    self.routes.commit()
                if not self.assigned[v]:
                    owed = drain(fd)
                    self.vm.irqfd(fd, gsi)
                    self.assigned[v] = True
                    if owed:
                        os.eventfd_write(fd, 1)
            elif self.assigned[v]:
                self.vm.irqfd(fd, gsi, const("KVM_IRQFD_FLAG_DEASSIGN"))
                self.assigned[v] = False
        except OSError as e:
            # KVM refused the guest's message (a route or irqfd it will not
            # take): the vector stays as it was, and the guest runs on.
            self.refused = f"MSI-X vector {v}: {e}"

    def forget_pending(self) -> None:
        """Drop the messages the masked vectors owe (a restore then signals the saved ones)."""
        for v, fd in enumerate(self.fds):
            if not self.assigned[v]:
                drain(fd)

    def close(self) -> None:
        """Deassign the irqfds (while the VM is open) and close the eventfds."""
        vm = self.vm
        for v, fd in enumerate(self.fds):
            if self.assigned[v] and vm.fd >= 0:
                try:
                    vm.irqfd(fd, self.gsis[v], const("KVM_IRQFD_FLAG_DEASSIGN"))
                except OSError:
                    pass  # the VM's own close drops it anyway
            self.assigned[v] = False
            os.close(fd)
        self.fds = []

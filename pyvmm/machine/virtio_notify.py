"""Queue notifies and interrupts of a virtio-mmio device through the kernel:
KVM_IOEVENTFD and KVM_IRQFD.

Each queue's QueueNotify write (the 32-bit queue index at base + 0x50) is a
KVM_IOEVENTFD with that index as datamatch: KVM signals the queue's eventfd
and resumes the vCPU without an exit. Devices emulated in Python are served
from the I/O thread on those eventfds; a kernel data plane (vhost) is handed
the kick eventfds itself.

The interrupt is a KVM_IRQFD on the device's SPI, edge-triggered (the device
tree says edge-rising, so the guest's GIC driver configures the SPI as edge
in GICD_ICFGR): each signal of the irqfd is one rising edge, which sets the
interrupt pending in the vGIC whatever its state. A vhost plane gets that
irqfd as its call eventfd, so no Python runs per interrupt; the I/O thread
signals it for the queues Python serves. The used-buffer bit of
InterruptStatus reads as set while the driver runs the device
(:meth:`VirtioMmio.interrupt_status_reg`), so an InterruptACK of that bit
alone changes nothing: KVM takes it (a KVM_IOEVENTFD with 1 as datamatch on
an eventfd nobody reads; KVM's count saturates), so Linux's interrupt
handler costs one MMIO exit to Python (its InterruptStatus read), not two
(bench/mmio_exits.py). Any other ACK value (the configuration-change bit)
still exits to the transport. docs/run.md ("Virtio interrupts") argues why
no interrupt is lost.

Level-triggered (a machine restored from a snapshot taken before edge, whose
guest configured its SPIs as level): KVM_IRQFD with a resamplefd. Signalling
it asserts the line until the guest ends the interrupt, then KVM lowers it and
signals the resamplefd, and the transport raises it again while its
InterruptStatus is non-zero. A vhost plane then signals an eventfd of its own
that the I/O thread turns into the used-buffer status: had it signalled the
irqfd, a signal while the line was still high would be lost when the guest
ended the interrupt (seen: a vsock stream stalled for good).
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Iterable, List, Optional

from .._ffi import const
from ..devices.io_thread import IoThread, bound, eventfd
from ..devices.virtio_mmio import INT_USED_BUFFER, R_INTERRUPT_ACK, R_QUEUE_NOTIFY, VirtioMmio

if TYPE_CHECKING:
    from ..vm import Vm

EDGE_CAPS = ("KVM_CAP_IOEVENTFD", "KVM_CAP_IRQFD")
LEVEL_CAPS = EDGE_CAPS + ("KVM_CAP_IRQFD_RESAMPLE",)


def needed_caps(edge: bool):
    """The KVM capabilities the eventfd path needs for this trigger type."""
    return EDGE_CAPS if edge else LEVEL_CAPS


def supported(kvm, edge: bool = True) -> bool:
    """KVM offers ioeventfds and irqfds (and irqfd resampling, for level-triggered interrupts)."""
    return all(kvm.check_extension(const(c)) > 0 for c in needed_caps(edge))


class Notifiers:
    """The eventfds of one virtio-mmio device: create them, then
    :meth:`register` once the vGIC exists (irqfds route through it).
    ``plane_call``: what a data plane outside Python (vhost) signals when it
    used buffers: the irqfd itself when ``edge``, else an eventfd the I/O
    thread passes to the transport (:meth:`VirtioMmio.plane_used`)."""

    def __init__(self, num_queues: int, edge: bool = True):
        self.edge = edge
        self.kicks: List[int] = []
        self.call = self.resample = self.own_call = self.ack = -1
        self._vm: Optional[Vm] = None
        self._base = self._spi = 0
        try:
            self.kicks = [eventfd() for _ in range(num_queues)]
            self.call = eventfd()
            if edge:  # absorbs InterruptACK writes of the used-buffer bit (never read)
                self.ack = eventfd()
            else:  # the resample requests and the plane's own call
                self.resample = eventfd()
                self.own_call = eventfd()
        except OSError:
            self.close()
            raise

    @property
    def plane_call(self) -> int:
        return self.call if self.edge else self.own_call

    def raise_irq(self, level: bool) -> None:
        """The transport's interrupt: a raise signals the irqfd (an edge; or,
        level-triggered, the line up until the guest ends the interrupt)."""
        if level:
            os.eventfd_write(self.call, 1)

    def _ioeventfds(self):
        """(address, length, eventfd, datamatch) of every KVM_IOEVENTFD."""
        fds = [(self._base + R_QUEUE_NOTIFY, 4, fd, i) for i, fd in enumerate(self.kicks)]
        if self.ack >= 0:
            fds.append((self._base + R_INTERRUPT_ACK, 4, self.ack, INT_USED_BUFFER))
        return fds

    def register(self, vm: Vm, base: int, spi: int) -> None:
        self._vm, self._base, self._spi = vm, base, spi
        for addr, length, fd, match in self._ioeventfds():
            vm.ioeventfd(addr, length, fd, datamatch=match)
        if self.edge:
            vm.irqfd(self.call, spi)
        else:
            vm.irqfd(self.call, spi, const("KVM_IRQFD_FLAG_RESAMPLE"), self.resample)

    def serve(self, io: IoThread, transport: VirtioMmio, queues: Iterable[int]) -> None:
        """The I/O thread serves the kicks of ``queues`` (the ones emulated
        in Python; a vhost plane reads the others itself) and, level-triggered,
        the interrupt's resample requests and the plane's call."""
        for i in queues:
            io.add_kick(self.kicks[i], bound(transport.notify, i))
        if not self.edge:
            io.add(self.resample, transport.resample)
            if transport.backend.kernel_queues:
                io.add(self.own_call, transport.plane_used)

    def close(self) -> None:
        """Unregister from KVM (when the VM is still open) and close the eventfds."""
        vm = self._vm
        if vm is not None and vm.fd >= 0:
            try:
                for addr, length, fd, match in self._ioeventfds():
                    vm.ioeventfd(addr, length, fd, datamatch=match, flags=const("KVM_IOEVENTFD_FLAG_DEASSIGN"))
                vm.irqfd(self.call, self._spi, const("KVM_IRQFD_FLAG_DEASSIGN"))
            except OSError:
                pass  # the VM's own close drops them anyway
        self._vm = None
        for fd in self.kicks + [self.call, self.resample, self.own_call, self.ack]:
            if fd >= 0:
                os.close(fd)
        self.kicks, self.call, self.resample, self.own_call, self.ack = [], -1, -1, -1, -1

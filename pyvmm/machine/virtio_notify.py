"""Queue notifies and interrupts of a virtio-mmio device through the kernel:
KVM_IOEVENTFD and KVM_IRQFD.

Each queue's QueueNotify write (the 32-bit queue index at base + 0x50) is a
KVM_IOEVENTFD with that index as datamatch: KVM signals the queue's eventfd
and resumes the vCPU without an exit. The device's interrupt is a KVM_IRQFD
on its SPI with a resamplefd (Documentation/virt/kvm/api.rst, KVM_IRQFD):
signalling the irqfd asserts the line until the guest EOIs it, then KVM
lowers it and signals the resamplefd, and the transport raises it again if
its InterruptStatus is still non-zero, which is the level-triggered
behaviour the device tree promises. Devices emulated in Python are served
from the I/O thread on those eventfds; a kernel data plane (vhost) is handed
the kick eventfds and a call eventfd of its own, which the I/O thread turns
into the transport's used-buffer status: had vhost signalled the irqfd
directly, a signal while the line was still high would be lost when the
guest ended the interrupt, and the transport could not know to raise it
again (seen: a vsock stream stalled for good).
"""
from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Iterable, List, Optional

from .._ffi import const
from ..devices.io_thread import IoThread, eventfd
from ..devices.virtio_mmio import R_QUEUE_NOTIFY, VirtioMmio

if TYPE_CHECKING:
    from ..vm import Vm


def supported(kvm) -> bool:
    """KVM offers ioeventfds, irqfds and irqfd resampling."""
    return all(kvm.check_extension(const(c)) > 0
               for c in ("KVM_CAP_IOEVENTFD", "KVM_CAP_IRQFD", "KVM_CAP_IRQFD_RESAMPLE"))


class Notifiers:
    """The eventfds of one virtio-mmio device: create them, then
    :meth:`register` once the vGIC exists (irqfds route through it).
    ``plane_call``: what a data plane outside Python (vhost) signals when it
    used buffers; the I/O thread passes that to the transport, which raises
    the interrupt (:meth:`VirtioMmio.plane_used`)."""

    def __init__(self, num_queues: int):
        self.kicks: List[int] = []
        self.call = self.resample = self.plane_call = -1
        self._vm: Optional[Vm] = None
        self._base = self._spi = 0
        try:
            self.kicks = [eventfd() for _ in range(num_queues)]
            self.call = eventfd()
            self.resample = eventfd()
            self.plane_call = eventfd()
        except OSError:
            self.close()
            raise

    def raise_irq(self, level: bool) -> None:
        """The transport's interrupt line: a raise signals the irqfd; KVM lowers
        the line itself when the guest ends the interrupt."""
        if level:
            os.eventfd_write(self.call, 1)

    def register(self, vm: Vm, base: int, spi: int) -> None:
        self._vm, self._base, self._spi = vm, base, spi
        for i, fd in enumerate(self.kicks):
            vm.ioeventfd(base + R_QUEUE_NOTIFY, 4, fd, datamatch=i)
        vm.irqfd(self.call, spi, const("KVM_IRQFD_FLAG_RESAMPLE"), self.resample)

    def serve(self, io: IoThread, transport: VirtioMmio, queues: Iterable[int]) -> None:
        """The I/O thread serves the kicks of ``queues`` (the ones emulated
        in Python; a vhost plane reads the others itself) and the interrupt's
        resample requests."""
        for i in queues:
            io.add(self.kicks[i], functools.partial(transport.notify, i))
        io.add(self.resample, transport.resample)
        if transport.backend.kernel_queues:
            io.add(self.plane_call, transport.plane_used)

    def close(self) -> None:
        """Unregister from KVM (when the VM is still open) and close the eventfds."""
        vm = self._vm
        if vm is not None and vm.fd >= 0:
            try:
                for i, fd in enumerate(self.kicks):
                    vm.ioeventfd(self._base + R_QUEUE_NOTIFY, 4, fd, datamatch=i,
                                 flags=const("KVM_IOEVENTFD_FLAG_DEASSIGN"))
                vm.irqfd(self.call, self._spi, const("KVM_IRQFD_FLAG_DEASSIGN"))
            except OSError:
                pass  # the VM's own close drops them anyway
        self._vm = None
        for fd in self.kicks + [self.call, self.resample, self.plane_call]:
            if fd >= 0:
                os.close(fd)
        self.kicks, self.call, self.resample, self.plane_call = [], -1, -1, -1

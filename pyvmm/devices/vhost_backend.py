"""A virtio backend whose queues a vhost data plane serves (the kernel's
vhost-net / vhost-vsock, or a vhost-user daemon through the same calls).

Python keeps the control plane: feature negotiation, the config space, the
transport's registers. When the driver sets DRIVER_OK the plane gets the
negotiated features, the memory table and, for each served queue, its size,
next available index, ring addresses (in this process), the queue's kick
eventfd (KVM_IOEVENTFD) and the device's call eventfd: the interrupt's
irqfd itself (edge-triggered), so from then on neither the guest's notifies,
nor the data, nor the plane's interrupts reach Python. (Level-triggered, on
a machine restored from an older snapshot, the call eventfd is one the I/O
thread turns into the transport's interrupt status: see
pyvmm/machine/virtio_notify.py.) A reset stops the plane (``stop``) before
the transport forgets the queues.

``plane`` is anything with set_features, set_mem_table, set_vring_num,
set_vring_base, set_vring_addr, set_vring_kick, set_vring_call and
get_vring_base (pyvmm.vhost.base.VhostFd, pyvmm.vhost.user.VhostUser).
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Sequence

from ..vhost.base import VHOST_F_LOG_ALL

from .io_thread import drain
from .virtqueue import DESC_SIZE, VIRTIO_RING_F_EVENT_IDX
from .virtio_mmio import VirtioBackend

# Ring features a vhost plane implements itself (virtio 1.2, 6): the
# device offers them only when the plane says it has them.
VIRTIO_RING_F_INDIRECT_DESC = 1 << 28
VIRTIO_F_VERSION_1 = 1 << 32
RING_FEATURES = VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX | VIRTIO_F_VERSION_1


class VhostBackend(VirtioBackend):
    kernel_queues = True
    served_queues: Sequence[int] = (0, 1)  # the queues the plane serves
    # Why the plane's dirty log (pyvmm/vhost/dirty.py) misses some of its
    # writes to guest RAM; "" (vhost-net): it logs them all.
    unlogged = "its writes to guest memory are not in a dirty log pyvmm can read"

    def __init__(self, plane, plane_features: int):
        self.plane = plane
        self.plane_features = plane_features  # what VHOST_GET_FEATURES answered
        self.kicks: List[int] = []
        self.call = -1
        self.direct = True  # self.call is the interrupt's irqfd (edge-triggered)
        self.running = False
        self.started: List[int] = []  # the queues handed to the plane
        self.log_address: Optional[int] = None  # the dirty log's bitmap while logging
        self.held = False  # stopped by a migration's pause until it ends (pyvmm/snapshot/vhost_log.py)

    def attach_eventfds(self, kicks: List[int], call: int, direct: bool = True) -> None:
        self.kicks, self.call, self.direct = kicks, call, direct

    def plane_feature_bits(self, negotiated: int) -> int:
        """The negotiated features the plane is told about: the ones it offered."""
        return negotiated & self.plane_features

    def activate(self, transport) -> None:
        p, mem = self.plane, transport.mem
        if self.log_address is not None:  # a driver (re)starting while the log is on
            p.set_log_base(self.log_address)
        p.set_features(self._features(transport))
        p.set_mem_table([(r.gpa, r.size, r.host_address(), r.fd) for r in mem.regions])
        self.started = []
        for i in self.served_queues:
            q = transport.queues[i]
            if not q.ready:
                continue
            self.started.append(i)
            p.set_vring_num(i, q.size)
            p.set_vring_base(i, q.last_avail)
            self._set_ring(transport, i)
            p.set_vring_kick(i, self.kicks[i])
            p.set_vring_call(i, transport.queue_call(i, self.call))
        self.start(transport)
        self.running = True

    def _features(self, transport) -> int:
        bits = self.plane_feature_bits(transport.driver_features)
        return bits | (1 << VHOST_F_LOG_ALL) if self.log_address is not None else bits

    def _set_ring(self, transport, i: int) -> None:
        """Ring ``i``'s addresses; while logging, its used ring logged at its guest address."""
        q, mem = transport.queues[i], transport.mem
        addrs = (mem.host_address(q.desc_addr, DESC_SIZE * q.size), mem.host_address(q.avail_addr, 6 + 2 * q.size),
                 mem.host_address(q.used_addr, 6 + 8 * q.size))
        if self.log_address is None:
            self.plane.set_vring_addr(i, *addrs)
        else:
            self.plane.set_vring_addr(i, *addrs, q.used_addr)

    # -- vhost's dirty log (pyvmm/vhost/dirty.py), with the transport's lock held ----------
    def log_start(self, transport, address: int) -> None:
        """Log every write to guest RAM into the bitmap at ``address``: its
        base first (VHOST_F_LOG_ALL is refused before the base covers guest
        RAM), then the rings' used-ring logging, then the feature bit."""
        self.log_to(address)
        if self.running:
            for i in self.started:
                self._set_ring(transport, i)
            self.plane.set_features(self._features(transport))

    def log_to(self, address: int) -> None:
        self.plane.set_log_base(address)
        self.log_address = address

    def log_stop(self, transport) -> None:
        self.log_address = None
        if self.running:
            self.plane.set_features(self._features(transport))
            for i in self.started:
                self._set_ring(transport, i)

    def reset(self) -> None:
        if self.running:
            self.running = False
            self.stop()
        self.started = []

    def queue_notify(self, transport, index: int) -> None:
        """Only reached when a notify bypassed the ioeventfd, or after a
        restore (notify_all): pass it on to the plane."""
        if index < len(self.kicks):
            os.eventfd_write(self.kicks[index], 1)

    # -- snapshots ----------------------------------------------------------------------
    def pause(self, transport) -> None:
        """Stop the plane and take back each served ring's next available
        index into the transport's queue (what a snapshot records), and
        (level-triggered) a used-buffer signal the I/O thread has not passed
        on yet into its interrupt status. An irqfd (edge) is KVM's to read."""
        self.stop()
        for i in self.started:
            transport.queues[i].last_avail = self.plane.get_vring_base(i)
        if not self.direct and self.call >= 0 and drain(self.call):
            transport.plane_used()

    def unpause(self, transport) -> None:
        self.start(transport)

    # -- what each device type does ------------------------------------------------
    def start(self, transport) -> None:
        """Let the plane run (rings are set up)."""

    def stop(self) -> None:
        """Stop the plane serving the rings."""

    def close(self) -> None:
        self.reset()
        self.plane.close()

    def save_state(self) -> Dict:
        return {}

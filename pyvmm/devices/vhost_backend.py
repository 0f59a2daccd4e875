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
from typing import Dict, List, Sequence

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

    def __init__(self, plane, plane_features: int):
        self.plane = plane
        self.plane_features = plane_features  # what VHOST_GET_FEATURES answered
        self.kicks: List[int] = []
        self.call = -1
        self.direct = True  # self.call is the interrupt's irqfd (edge-triggered)
        self.running = False
        self.started: List[int] = []  # the queues handed to the plane

    def attach_eventfds(self, kicks: List[int], call: int, direct: bool = True) -> None:
        self.kicks, self.call, self.direct = kicks, call, direct

    def plane_feature_bits(self, negotiated: int) -> int:
        """The negotiated features the plane is told about: the ones it offered."""
        return negotiated & self.plane_features

    def activate(self, transport) -> None:
        p, mem = self.plane, transport.mem
        p.set_features(self.plane_feature_bits(transport.driver_features))
        p.set_mem_table([(r.gpa, r.size, r.host_address(), r.fd) for r in mem.regions])
        self.started = []
        for i in self.served_queues:
            q = transport.queues[i]
            if not q.ready:
                continue
            self.started.append(i)
            p.set_vring_num(i, q.size)
            p.set_vring_base(i, q.last_avail)
            p.set_vring_addr(i, mem.host_address(q.desc_addr, DESC_SIZE * q.size),
                             mem.host_address(q.avail_addr, 6 + 2 * q.size),
                             mem.host_address(q.used_addr, 6 + 8 * q.size))
            p.set_vring_kick(i, self.kicks[i])
            p.set_vring_call(i, self.call)
        self.start(transport)
        self.running = True

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

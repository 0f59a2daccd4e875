"""The vhost back ends of a machine and the dirty log (pyvmm/vhost/dirty.py):
which machines can be tracked, the log that covers them, and the planes a
live migration holds stopped from its pause to its end (stop_planes and
restart_planes, from pyvmm/machine/vhost_planes.py).

A machine is tracked when every device on a vhost plane logs all its writes
to guest RAM (vhost-net); the others (vhost-vsock, virtio-fs) say why not
(``VhostBackend.unlogged``), and a migration or an incremental snapshot of
their machine is refused with that reason.
"""
from __future__ import annotations

import mmap
from typing import TYPE_CHECKING, Optional

from ..devices.vhost_backend import VhostBackend
from ..dirty_log import DirtyLog
from ..machine.vhost_planes import restart_planes, stop_planes  # noqa: F401 (this package's callers use them from here)
from ..vhost.dirty import VhostLog

if TYPE_CHECKING:
    from ..machine.vhost_planes import Held  # noqa: F401 (for callers' annotations)


def untracked(m) -> Optional[str]:
    """Why pyvmm cannot see every write to machine ``m``'s RAM, or None."""
    for t in m.transports:
        b = t.backend
        why = getattr(b, "unlogged", VhostBackend.unlogged)
        if b.kernel_queues and why:
            return f"its {type(b).__name__} at {t.base:#x} runs on a vhost data plane: {why}"
    return None


class _Target:
    """One device's plane as :class:`VhostLog` drives it, under its transport's lock."""

    def __init__(self, transport):
        self.t = transport

    def log_start(self, address: int) -> None:
        with self.t.lock:
            self.t.backend.log_start(self.t, address)

    def log_to(self, address: int) -> None:
        with self.t.lock:
            self.t.backend.log_to(address)

    def log_stop(self) -> None:
        with self.t.lock:
            self.t.backend.log_stop(self.t)


def dirty_log(m) -> DirtyLog:
    """KVM's dirty log of ``m``'s RAM, with its vhost planes' logs merged in
    (call :func:`untracked` first)."""
    targets = [_Target(t) for t in m.transports if isinstance(t.backend, VhostBackend)]
    regions = [(r.slot, r.gpa, r.size) for r in m.mem.regions if not r.readonly]
    return DirtyLog(m.vm, m.mem, [VhostLog(targets, regions, mmap.PAGESIZE)] if targets else [])

"""The vhost back ends of a machine and the dirty log (pyvmm/vhost/dirty.py):
which machines can be tracked, the log that covers them, and the planes a
live migration holds stopped from its pause to its end.

A machine is tracked when every device on a vhost plane logs all its writes
to guest RAM (vhost-net); the others (vhost-vsock, virtio-fs) say why not
(``VhostBackend.unlogged``), and a migration or an incremental snapshot of
their machine is refused with that reason.
"""
from __future__ import annotations

import mmap
from typing import List, Optional, Tuple

from ..devices.vhost_backend import VhostBackend
from ..dirty_log import DirtyLog
from ..vhost.dirty import VhostLog


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


Held = List[Tuple[VhostBackend, object]]


def stop_planes(m) -> Held:
    """Stop every running vhost plane of the paused machine ``m`` that is
    not held stopped already (their rings' next indices read back) and
    hold them so until :func:`restart_planes`. A snapshot does this while
    it saves the machine; a migration before its last dirty look (a paused
    guest's receive ring can still be filled by vhost), until it ends: a
    snapshot taken meanwhile leaves its planes stopped."""
    held: Held = []
    try:
        for t in m.transports:
            b = t.backend
            if isinstance(b, VhostBackend) and b.running and not b.held:
                with t.lock:
                    b.pause(t)
                    b.held = True
                held.append((b, t))
    except BaseException:
        restart_planes(held)
        raise
    return held


def restart_planes(held: Held) -> None:
    """Let the planes :func:`stop_planes` stopped run again (a migration that failed)."""
    for b, t in held:
        with t.lock:  # type: ignore[attr-defined]
            b.held = False
            b.unpause(t)

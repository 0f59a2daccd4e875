"""Holding a machine's vhost data planes stopped: the kernel's workers no
longer touch guest RAM or the rings until they are let go. A snapshot holds
them while it saves the machine, a live migration from its last dirty look to
its end (pyvmm/snapshot/vhost_log.py), and Machine.run's file copy while it
replaces the kernel's and initrd's mapped files (pyvmm/memory.py)."""
from __future__ import annotations

from ..devices.vhost_backend import VhostBackend

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: Machine.run's file copy loads this
if TYPE_CHECKING:      # module while the guest boots (start-up time; type checkers read True)
    from typing import List, Tuple

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

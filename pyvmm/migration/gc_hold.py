"""Python's cyclic garbage collector held off while a migrating guest is
paused (:class:`CollectorHold`).

A collection of the oldest generation walks every object of the process
(tens of thousands once pyvmm's modules are loaded) and, under emulation,
took tens of milliseconds; it starts whenever allocations pass a threshold,
so in a live migration's pause it landed at random in the source's state
read or the destination's decode or check (the 2026-12-05 bench: one of
those parts 24-36 ms in one round, 1.5-8 ms in the next). Nothing in the
pause makes reference cycles to speak of (register values, frames, a
decoded state), and reference counting still frees everything else, so the
collector waits until the pause is over.
"""
from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_holds = 0
_was_enabled = False


class CollectorHold:
    """Holds the cyclic collector off from creation until :meth:`release`
    (idempotent). Holds nest (a source and a destination in one process):
    the last one released restores the collector as the first found it."""

    def __init__(self) -> None:
        global _holds, _was_enabled
        with _lock:
            if _holds == 0:
                _was_enabled = gc.isenabled()
                gc.disable()
            _holds += 1
        self.held = True

    def release(self) -> None:
        global _holds
        with _lock:
            if not self.held:
                return
            self.held = False
            _holds -= 1
            if _holds == 0 and _was_enabled:
                gc.enable()

"""Live control of a running machine: the requests a ``--control`` socket
accepts (see :mod:`pyvmm.control.channel` for the wire format).

    status               {"state": "running"|"paused"|"starting", "vcpus": N, "mem": BYTES}
    pause / resume       park every vCPU outside KVM_RUN / let them run again
    snapshot {path, stop}  pause (if running), save to path atomically, then
                         resume (or, with stop, end the VM: pyvmm exits 0)
    stop                 end the VM (pyvmm exits 0)

A snapshot of a guest that was paused by ``pause`` leaves it paused.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Dict, Optional

from .channel import ControlError
from ..machine import ExitStatus, Machine
from ..snapshot import format as fmt
from ..snapshot import machine_snapshot


class Controller:
    """Answers control requests for the machine currently running (a guest
    reset replaces it: :meth:`attach` is the ``on_ready`` hook of
    :func:`pyvmm.machine.run`)."""

    def __init__(self):
        self._machine: Optional[Machine] = None
        self._lock = threading.Lock()

    def attach(self, m: Machine) -> None:
        with self._lock:
            self._machine = m

    def _current(self) -> Machine:
        m = self._machine
        if m is None:
            raise ControlError("the VM is starting or rebooting; try again")
        return m

    def handle(self, request: Dict, send: Callable[[Dict], None]) -> Dict:
        with self._lock:
            cmd = request.get("cmd")
            m = self._current()
            if cmd == "status":
                return {"ok": True, "state": "paused" if m.paused else "running", "vcpus": len(m.vcpus),
                        "mem": m.config.mem}
            if cmd == "pause":
                if not m.paused:
                    m.pause()
                return {"ok": True, "state": "paused"}
            if cmd == "resume":
                m.resume()
                return {"ok": True, "state": "running"}
            if cmd == "stop":
                m.finish(ExitStatus.POWEROFF, "stopped through the control socket")
                return {"ok": True, "state": "stopped"}
            if cmd == "snapshot":
                return self._snapshot(m, request, send)
            raise ControlError(f"unknown request {cmd!r} (status, pause, resume, snapshot, stop)")

    def _snapshot(self, m: Machine, request: Dict, send: Callable[[Dict], None]) -> Dict:
        path = request.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ControlError("snapshot needs an absolute path")
        if not os.path.isdir(os.path.dirname(path)):
            raise ControlError(f"{os.path.dirname(path)}: no such directory")
        stop = bool(request.get("stop"))
        machine_snapshot.check_snapshottable(m)  # before the guest is paused for nothing
        was_paused = m.paused
        t0 = time.monotonic()
        if not was_paused:
            m.pause()
        ok = False
        try:
            last = [0.0]

            def progress(done: int, total: int, what: str) -> None:
                now = time.monotonic()
                if now - last[0] >= 0.1 or done == total:
                    last[0] = now
                    send({"progress": [done, total], "what": what})

            snap = machine_snapshot.take(m, lambda d, t: progress(d, t, "memory"))
            t_saved = time.monotonic()
            size = fmt.save(path, snap, lambda d, t: progress(d, t, "file"))
            ok = True
        finally:
            if stop and ok:  # a failed snapshot never ends the VM
                m.finish(ExitStatus.POWEROFF, "stopped after a snapshot")
            elif not was_paused:
                m.resume()
        t1 = time.monotonic()
        stored = sum(r["stored_pages"] for r in snap.manifest["machine"]["memory"])
        return {"ok": True, "path": path, "bytes": size, "stored_pages": stored,
                "paused_seconds": round(t1 - t0, 3), "save_seconds": round(t_saved - t0, 3),
                "write_seconds": round(t1 - t_saved, 3), "state": "stopped" if stop
                else ("paused" if was_paused else "running")}

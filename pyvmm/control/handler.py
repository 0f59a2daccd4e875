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

import dataclasses
import os
import threading
import time
from typing import Callable, Dict, Optional

from ..devices.state import StateReader
from ..errors import UsageProblem
from .channel import ControlError
from ..machine import ExitStatus, Machine
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

    # The fields each request may carry ("stop" is optional in snapshot).
    _FIELDS = {"status": (), "pause": (), "resume": (), "stop": (), "snapshot": ("path",)}

    def handle(self, request: Dict, send: Callable[[Dict], None]) -> Dict:
        cmd = request.get("cmd")
        if cmd not in self._FIELDS:
            raise ControlError(f"unknown request {cmd!r} (status, pause, resume, snapshot, stop)")
        keys = ("cmd",) + self._FIELDS[cmd] + (("stop",) if cmd == "snapshot" and "stop" in request else ())
        try:
            r = StateReader(f"{cmd} request", request, keys)
            if cmd == "snapshot":
                r.str("path")
                if "stop" in request:
                    r.bool("stop")
        except UsageProblem as e:
            raise ControlError(e.message) from None
        with self._lock:
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
            return self._snapshot(m, request, send)

    def _snapshot(self, m: Machine, request: Dict, send: Callable[[Dict], None]) -> Dict:
        path = request["path"]
        if not os.path.isabs(path) or "\0" in path:
            raise ControlError(f"snapshot needs an absolute path, not {path!r}")
        if not os.path.isdir(os.path.dirname(path)):
            raise ControlError(f"snapshot {path}: directory {os.path.dirname(path)} does not exist")
        if os.path.isdir(path):
            raise ControlError(f"snapshot {path} is a directory; give a file name")
        last = [0.0]

        def progress(done: int, total: int, what: str) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.1 or done == total:
                last[0] = now
                send({"progress": [done, total], "what": what})

        report = machine_snapshot.save_live(m, path, progress, stop=bool(request.get("stop")))
        return {"ok": True, **dataclasses.asdict(report)}

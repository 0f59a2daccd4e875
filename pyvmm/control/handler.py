"""Live control of a running machine: the requests a ``--control`` socket
accepts (see :mod:`pyvmm.control.channel` for the wire format).

    status               {"state": "running"|"paused"|"starting", "vcpus": N, "mem": BYTES}
    pause / resume       park every vCPU outside KVM_RUN / let them run again
    snapshot {path, stop?, since?}
                         pause (if running), save to path atomically, then
                         resume (or, with stop, end the VM: pyvmm exits 0);
                         since: the absolute path of this VM's latest
                         snapshot, to store only what changed since then
    stop                 end the VM (pyvmm exits 0)
    migrate {dest, max_downtime_ms?, bandwidth_mib?}
                         live-migrate the guest to a pyvmm restore --incoming
                         listening on dest; progress replies carry "migration"
                         (round, pages_left, rate_mib); once the destination
                         runs the guest, this VM ends (pyvmm exits 0)

A snapshot of a guest that was paused by ``pause`` leaves it paused.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Callable, Dict, Optional

from .._record import as_dict
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
    _FIELDS = {"status": (), "pause": (), "resume": (), "stop": (), "snapshot": ("path",), "migrate": ("dest",)}
    _OPTIONAL = {"snapshot": ("stop", "since"), "migrate": ("max_downtime_ms", "bandwidth_mib")}

    def handle(self, request: Dict, send: Callable[[Dict], None]) -> Optional[Dict]:
        cmd = request.get("cmd")
        if cmd not in self._FIELDS:
            raise ControlError(f"unknown request {cmd!r} (status, pause, resume, snapshot, migrate, stop)")
        keys = ("cmd",) + self._FIELDS[cmd] + tuple(k for k in self._OPTIONAL.get(cmd, ()) if k in request)
        try:
            r = StateReader(f"{cmd} request", request, keys)
            if cmd == "snapshot":
                r.str("path")
                if "stop" in request:
                    r.bool("stop")
                if "since" in request:
                    r.str("since")
            if cmd == "migrate":
                r.str("dest")
                if "max_downtime_ms" in request:
                    r.int("max_downtime_ms", 1, 3_600_000)
                if "bandwidth_mib" in request:
                    r.int("bandwidth_mib", 1, 1 << 20)
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
            if cmd == "migrate":
                self._migrate(m, request, send)
                return None  # _migrate sent the reply itself, before ending the VM
            return self._snapshot(m, request, send)

    def _migrate(self, m: Machine, request: Dict, send: Callable[[Dict], None]) -> None:
        from ..migration import source

        last = [0.0]

        def progress(info: Dict) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.2 or "phase" in info:
                last[0] = now
                what = (f"migration: {info['phase']}" if "phase" in info else
                        f"migration round {info.get('round', 0)}: {info.get('pages_left', 0)} pages left, "
                        f"{info.get('rate_mib', 0.0):.1f} MiB/s")
                send({"progress": [int(info.get("round", 0)), int(info.get("pages_left", 0))], "what": what})

        report = source.migrate(m, request["dest"], request.get("max_downtime_ms", source.DEFAULT_MAX_DOWNTIME_MS),
                                request.get("bandwidth_mib"), progress)
        # The one reply goes out before this VM ends (its process exits soon after).
        send({"ok": True, **dataclasses.asdict(report)})
        m.finish(ExitStatus.POWEROFF, f"migrated to {report.dest}")

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

        since = request.get("since")
        if since is not None and (not os.path.isabs(since) or "\0" in since):
            raise ControlError(f"snapshot since needs an absolute path, not {since!r}")
        report = machine_snapshot.save_live(m, path, progress, stop=bool(request.get("stop")), since=since)
        return {"ok": True, **as_dict(report)}

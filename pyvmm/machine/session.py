"""A ``pyvmm run`` session (:func:`run`): one machine after another across guest
resets, with the signals, the console escape and --dump-dtb around them."""
from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Callable, List, Optional

from ..errors import UsageProblem
from .config import ExitStatus, MachineConfig, Outcome, prepare
from .console import ConsoleInput
from .machine import Machine


def _noop(signum, frame):
    pass


def run(config: MachineConfig, output: Callable[[bytes], None], input_fd: Optional[int] = None,
        escape: bool = False, on_ready: Optional[Callable[[Machine], None]] = None,
        first_build: Optional[Callable[[Machine], None]] = None, start_paused: bool = False,
        kvm=None) -> Outcome:
    """Boot the guest; restart it on reset when ``on_reboot`` is "restart".
    Must be called from the main thread (it installs signal handlers).

    ``first_build(machine)`` builds the first machine instead of
    :meth:`Machine.build` (snapshot restore); a later reset boots the kernel
    of ``config`` afresh, if its files are still there. ``start_paused``:
    the first machine's vCPUs wait for :meth:`Machine.resume`.
    ``on_ready(machine)`` is called for each machine before it runs."""
    from ..kvm import open_kvm

    payload = prepare(config) if first_build is None else None
    own_kvm = kvm is None
    if own_kvm:
        kvm = open_kvm(config.kvm_path)
    console_in = ConsoleInput(input_fd, escape)
    current: List[Optional[Machine]] = [None]
    stop_request: List[Optional[tuple]] = [None]

    def stop(status, reason):
        stop_request[0] = (status, reason)
        m = current[0]
        if m is not None:
            m.finish(status, reason)

    handlers = {signal.SIGUSR1: _noop,
                signal.SIGINT: lambda s, f: stop(ExitStatus.INTERRUPTED, "stopped by SIGINT"),
                signal.SIGTERM: lambda s, f: stop(ExitStatus.TERMINATED, "stopped by SIGTERM")}
    old = {s: signal.signal(s, h) for s, h in handlers.items()}
    console_in.on_escape = lambda: stop(ExitStatus.INTERRUPTED, "stopped from the console (Ctrl-A x)")
    resets = 0
    try:
        console_in.start()
        while True:
            m = Machine(kvm, config, payload, output)
            try:
                t_build = time.monotonic()
                if config.trace_mmio:
                    m.bus.trace = Counter()
                if first_build is not None and resets == 0:
                    first_build(m)
                    if start_paused:
                        m.request_pause()
                        m.freeze_clock()  # no vCPU has run: its counters are the restored ones
                else:
                    m.build()
                t_build = time.monotonic() - t_build
                if config.dump_dtb and resets == 0 and m.dtb:
                    _write_file(config.dump_dtb, m.dtb)
                current[0] = m
                console_in.sink = m.console_sink()
                if on_ready:
                    on_ready(m)
                if stop_request[0] is not None:
                    m.finish(*stop_request[0])
                outcome = m.run()
            finally:
                console_in.sink = None
                current[0] = None
                m.close()
            if stop_request[0] is not None and outcome.status == ExitStatus.RESET:
                # stopped while the guest was resetting: the stop is the answer
                outcome.status, outcome.reason = stop_request[0]
            elif outcome.status == ExitStatus.RESET and config.on_reboot == "restart":
                try:
                    if payload is None:  # the first machine came from a snapshot
                        payload = prepare(config)
                    resets += 1
                    continue
                except UsageProblem as e:
                    outcome.reason = f"the guest asked for a reset, and its kernel cannot be booted again ({e})"
            outcome.resets = resets
            outcome.build_seconds = t_build
            outcome.mmio_trace = m.bus.trace
            return outcome
    finally:
        console_in.stop()
        for s, h in old.items():
            signal.signal(s, h)
        if own_kvm:
            kvm.close()


def _write_file(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise UsageProblem(f"--dump-dtb {path}: {e.strerror}") from None

"""A run session (:class:`Session`): one machine after another across guest
resets, with the console input and a stop that any thread may request."""
from __future__ import annotations

from .. import _threads
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Tuple

    from .exit_status import ExitStatus

from ..errors import UsageProblem
from .config import RESET_REASON, MachineConfig, Outcome, Payload, counter, prepare
from .console import ConsoleInput
from .machine import Machine


class Session:
    """Boots the guest of ``config`` and runs it until it ends; a reset boots
    it again when ``config.on_reboot`` is "restart". :meth:`run` may be
    called from any thread (it installs no Python signal handlers);
    :meth:`stop` and :attr:`current` from any other.

    ``first_build(machine)`` builds the first machine instead of
    :meth:`Machine.build` (snapshot restore); a later reset boots the kernel
    of ``config`` afresh, if its files are still there. ``start_paused``:
    the first machine's vCPUs wait for :meth:`Machine.resume`.
    ``on_ready(machine)`` is called for each machine before it runs.
    ``input_fd``: host console input (``escape``: Ctrl-A x stops the guest).
    ``kvm``: an open :class:`pyvmm.kvm.Kvm` (else one is opened and closed here).
    ``payload``: what :func:`prepare` returned for ``config``, when the caller
    has it already (its files are not read again); else it is prepared here."""

    def __init__(self, config: MachineConfig, output: Callable[[bytes], None], input_fd: Optional[int] = None,
                 escape: bool = False, on_ready: Optional[Callable[[Machine], None]] = None,
                 first_build: Optional[Callable[[Machine], None]] = None, start_paused: bool = False,
                 kvm: Any = None, payload: Optional[Payload] = None):
        self.config = config
        self.payload = payload
        self.output = output
        self.on_ready = on_ready
        self.first_build = first_build
        self.start_paused = start_paused
        self.kvm = kvm
        self.console_in = ConsoleInput(input_fd, escape)
        self.console_in.on_escape = self._escaped
        self._lock = _threads.RLock()  # re-entered by a signal handler calling stop()
        self._current: Optional[Machine] = None
        self._stop_request: Optional[Tuple[ExitStatus, str]] = None

    @property
    def current(self) -> Optional[Machine]:
        """The machine running now (None while one is being built, and after the end)."""
        return self._current

    def _escaped(self) -> None:
        from .exit_status import ExitStatus  # loaded once needed (start-up time)

        self.stop(ExitStatus.INTERRUPTED, "stopped from the console (Ctrl-A x)")

    def stop(self, status: ExitStatus, reason: str) -> None:
        """End the session with ``status``: the running machine stops, and a
        machine being built stops as soon as it is ready. Safe from any thread
        and from a signal handler."""
        with self._lock:
            if self._stop_request is None:
                self._stop_request = (status, reason)
            m = self._current
        if m is not None:
            m.finish(status, reason)

    def _set_current(self, m: Optional[Machine]) -> None:
        with self._lock:
            self._current = m
            stop = self._stop_request
        if m is not None and stop is not None:
            m.finish(*stop)

    def run(self) -> Outcome:
        """Run machines until the guest ends without a reboot; returns how it ended."""
        from ..kvm import open_kvm

        config = self.config
        payload = self.payload
        if payload is None and self.first_build is None:
            payload = prepare(config)
        own_kvm = self.kvm is None
        kvm = self.kvm
        resets = 0
        first_run_ns: Optional[int] = None
        try:
            if own_kvm:
                kvm = open_kvm(config.kvm_path)
            # Console input is read from once the first booted machine's vCPUs run: its
            # guest cannot tell (input waits in the fd meanwhile), and the reader's
            # thread does not hold up the build (start-up time; docs/benchmarks.md). A
            # restore reads it from the start, so Ctrl-A x can stop a long one (an
            # incoming migration's wait).
            if self.first_build is not None:
                self.console_in.start()
            while True:
                m = Machine(kvm, config, payload, self.output)
                try:
                    t_build = time.monotonic()
                    if config.trace_mmio:
                        m.bus.trace = {}
                    if self.first_build is not None and resets == 0:
                        self.first_build(m)
                    else:
                        m.build()
                    if self.start_paused and resets == 0:
                        m.request_pause()
                        m.freeze_clock()  # no vCPU has run: its counters are the built ones
                    t_build = time.monotonic() - t_build
                    if config.dump_dtb and resets == 0 and m.dtb:
                        _write_file(config.dump_dtb, m.dtb)
                    self.console_in.sink = m.console_sink()
                    if self.on_ready:
                        self.on_ready(m)
                    self._set_current(m)
                    outcome = m.run(on_running=self.console_in.start)
                    if first_run_ns is None:
                        first_run_ns = m.first_run_ns
                finally:
                    self.console_in.sink = None
                    self._set_current(None)
                    m.close()
                stop = self._stop_request
                from .exit_status import ExitStatus  # loaded once a machine has ended (start-up time)

                if stop is not None and outcome.status == ExitStatus.RESET:
                    # stopped while the guest was resetting: the stop is the answer
                    outcome.status, outcome.reason = stop
                elif outcome.status == ExitStatus.RESET and config.on_reboot == "restart" and stop is None:
                    try:
                        if payload is None:  # the first machine came from a snapshot
                            payload = prepare(config)
                        resets += 1
                        continue
                    except UsageProblem as e:
                        if not (config.kernel or config.firmware):  # a restore without a trusted payload
                            outcome.reason = (f"{RESET_REASON}, and there is no kernel to boot again (a restored "
                                              "VM reboots only a kernel given to pyvmm restore with --kernel or "
                                              "--firmware, or named by a snapshot sealed by your pyvmm)")
                        else:
                            outcome.reason = f"{RESET_REASON}, and its kernel cannot be booted again ({e})"
                outcome.resets = resets
                outcome.build_seconds = t_build
                outcome.first_run_ns = first_run_ns
                outcome.mmio_trace = None if m.bus.trace is None else counter(m.bus.trace)
                return outcome
        finally:
            self.console_in.stop()
            if payload is not None:
                payload.close()  # the files its first load did not take (KVM or a build that failed before it)
            if own_kvm and kvm is not None:
                kvm.close()


def _write_file(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise UsageProblem(f"--dump-dtb {path}: {e.strerror}") from None

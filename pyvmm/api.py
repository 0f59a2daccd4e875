"""The library's public surface for live state save/restore: start (boot) or
restore a machine, then pause, snapshot, inspect and wait for it from any thread.

A handful of calls, in the spirit of libvirt's ``dom.save``/``conn.restore``,
QMP's ``stop``/``migrate`` and Firecracker's ``/snapshot/create`` and
``/snapshot/load``::

    import pyvmm

    config = pyvmm.MachineConfig(kernel="Image", initrd="initramfs.cpio.gz", cpus=2)
    with pyvmm.start(config) as vm:         # returns once the guest is built and running
        vm.pause()
        pc = vm.get_register(0, "PC")
        vm.snapshot("vm.snap")               # atomic, mode 0600; a paused guest stays paused
        vm.resume()
    with pyvmm.restore("vm.snap") as again:  # a new machine in the saved state
        outcome = again.wait(timeout=60)     # None while it still runs

Each :class:`VirtualMachine` runs its vCPUs on threads of its own and is
driven from any thread: the caller's main thread is not needed, and no
Python signal handler is installed (the vCPU kick signal, SIGUSR1, gets a
no-op C handler when it has none: :mod:`pyvmm.machine.kick`). Errors are the
:class:`PyvmmError` family; nothing here prints or exits.
"""
from __future__ import annotations

from . import _threads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional

from .arm64 import regs
from .errors import GuestError, HostUnsupported, KvmError, PyvmmError, SnapshotError, UsageProblem
from .kvm import DEFAULT_PATH
from .machine import DiskSpec, Machine, MachineConfig, Outcome, Payload
from .machine.session import Session

if TYPE_CHECKING:  # loaded on first use (__getattr__ below): booting a guest needs none of them
    from .machine.exit_status import ExitStatus
    from .snapshot.machine_snapshot import SaveReport
    from .vecstate import SavedVecState, VecState

__all__ = [
    "start", "restore", "incoming", "VirtualMachine",
    "MachineConfig", "DiskSpec", "ExitStatus", "Outcome", "SaveReport", "SavedVecState",
    "PyvmmError", "UsageProblem", "HostUnsupported", "GuestError", "KvmError", "SnapshotError",
]


def __getattr__(name: str) -> Any:
    """:class:`SaveReport` (from the snapshot modules), :class:`ExitStatus` (its :mod:`enum`
    is not needed before a guest runs) and :class:`SavedVecState` (from :mod:`pyvmm.vecstate`),
    loaded on first use (PEP 562)."""
    value: Any
    if name == "SaveReport":
        from .snapshot import machine_snapshot as module
    elif name == "ExitStatus":
        from .machine import exit_status as module  # type: ignore[no-redef]
    elif name == "SavedVecState":
        from . import vecstate as module  # type: ignore[no-redef]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(module, name)
    return value


if TYPE_CHECKING:
    Output = Callable[[bytes], None]
    Progress = Callable[[int, int, str], None]
CONSOLE_KEEP = 1 << 20  # console bytes a VirtualMachine keeps when no output callable is given


class VirtualMachine:
    """A running (or paused) guest, as :func:`start` and :func:`restore`
    return it. Every method may be called from any thread; calls are
    serialised. Registers and vector state are read and written only while
    the machine is paused. :meth:`close` (or leaving a ``with`` block) stops
    the guest if it still runs and releases everything the machine holds:
    threads, VM and vCPU fds, guest memory, the KVM fd it opened."""

    def __init__(self, session: Session, kvm: Any = None, console: Optional[bytearray] = None):
        # Not for direct use: see start() and restore().
        self._session = session
        self._kvm = kvm  # closed by close() when restore() opened it
        self._console = console
        self._lock = _threads.RLock()
        self._ready = _threads.Event()
        self._machine: Optional[Machine] = None
        self._vec: Dict[int, VecState] = {}
        self._outcome: Optional[Outcome] = None
        self._error: Optional[BaseException] = None
        # A restored machine: how its guest memory was loaded ("mapped" from
        # the snapshot file, or "read: " and why not); None for a booted one.
        self.memory_load: Optional[str] = None
        self._closed = False
        user_ready = session.on_ready

        def on_ready(m: Machine) -> None:
            with self._lock:
                self._machine, self._vec = m, {}
            if user_ready is not None:
                user_ready(m)
            self._ready.set()
        session.on_ready = on_ready
        self._thread = _threads.Thread(target=self._run, name="pyvmm-session")

    def _run(self) -> None:
        try:
            self._outcome = self._session.run()
        except BaseException as e:  # noqa: BLE001 (handed to the caller by start/restore or wait)
            self._error = e
        finally:
            self._machine = None
            self._ready.set()

    def _start(self) -> "VirtualMachine":
        """Start the session thread; return once the first machine is built
        (or raise what stopped it from being built, with nothing left behind)."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None and self._outcome is None:
            self._thread.join()
            self._release()
            raise self._error
        return self

    # -- state -----------------------------------------------------------------
    @property
    def config(self) -> MachineConfig:
        """The machine's configuration (for a restored one, the snapshot's)."""
        return self._session.config

    @property
    def running(self) -> bool:
        """True until the guest has ended (powered off, crashed, stopped ...)."""
        return self._thread.is_alive()

    @property
    def paused(self) -> bool:
        """True while the guest's vCPUs are held by :meth:`pause` (or a paused start)."""
        m = self._machine
        return m is not None and m.paused

    @property
    def vcpu_count(self) -> int:
        """The number of vCPUs."""
        return self.config.cpus

    def console_output(self) -> bytes:
        """What the guest wrote to its console, when :func:`start` or
        :func:`restore` got no ``output`` callable (the last MiB)."""
        return bytes(self._console) if self._console is not None else b""

    def _current(self) -> Machine:
        m = self._machine
        if m is None:
            raise UsageProblem("the machine has ended" if self._ready.is_set() else "the machine is not built yet")
        return m

    def _paused_machine(self) -> Machine:
        m = self._current()
        if not m.paused:
            raise UsageProblem("the machine is running: pause() it before reading or writing vCPU state")
        return m

    # -- running -----------------------------------------------------------------
    def pause(self, timeout: float = 30.0) -> None:
        """Stop every vCPU with its state consistent (a pending device access
        completed, the coalesced ring drained); the guest does not see the
        pause unless it was restored with ``clock="keep"``. No effect when
        already paused. Raises :class:`GuestError` if the vCPUs do not stop
        within ``timeout`` seconds or the guest ends meanwhile."""
        with self._lock:
            m = self._current()
            m.pause(timeout)

    def resume(self) -> None:
        """Let the vCPUs run again after :meth:`pause` (or a paused start)."""
        with self._lock:
            self._current().resume()

    def stop(self, status: Optional[ExitStatus] = None, reason: str = "stopped through the library") -> None:
        """End the guest (as if it powered off, ``ExitStatus.POWEROFF``, unless another
        ``status`` is given); :meth:`wait` then returns its :class:`Outcome`. Safe from any
        thread and from a signal handler; no effect once it has ended."""
        if status is None:
            from .machine.exit_status import ExitStatus  # loaded when needed (start-up time)

            status = ExitStatus.POWEROFF
        self._session.stop(status, reason)

    def wait(self, timeout: Optional[float] = None) -> Optional[Outcome]:
        """Wait until the guest ends; return its :class:`Outcome`, or None if
        it still runs after ``timeout`` seconds. Raises the error that ended
        the session, if one did (e.g. a reset whose kernel is gone)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return None
        if self._error is not None:
            raise self._error
        return self._outcome

    # -- snapshots -----------------------------------------------------------------
    def snapshot(self, path: str, progress: Optional[Progress] = None, stop: bool = False,
                 since: Optional[str] = None) -> SaveReport:
        """Save the machine to ``path``: pause it if it runs, write every
        vCPU, the vGIC, the devices and guest memory atomically (mode 0600),
        then let it run on. A paused machine stays paused; with ``stop`` the
        guest ends once the file is complete. ``progress(done, total, what)``
        hears about "memory" and "file". ``since``: the path of this
        machine's latest snapshot; only the memory written since then is
        stored, and :func:`restore` of ``path`` restores the chain
        (docs/snapshot-format.md, "Version 3"). Returns what was written."""
        from .snapshot import machine_snapshot

        with self._lock:
            return machine_snapshot.save_live(self._current(), path, progress, stop, since)

    def migrate(self, dest: str, max_downtime_ms: float = 300, bandwidth_mib: Optional[float] = None,
                progress: Optional[Callable[[Dict], None]] = None) -> Any:
        """Live-migrate the running guest to a :func:`incoming` (``pyvmm
        restore --incoming``) listening on ``dest`` (``unix:PATH``,
        ``tcp:HOST:PORT``), docs/migration.md. On success the guest runs
        there and this machine has ended (:meth:`wait` returns); returns
        the :class:`pyvmm.migration.source.MigrationReport`. On failure
        raises :class:`pyvmm.migration.source.MigrationError` and the guest
        runs on here."""
        from .migration import source

        with self._lock:
            m = self._current()
            report = source.migrate(m, dest, max_downtime_ms, bandwidth_mib, progress)
            from .machine.exit_status import ExitStatus

            m.finish(ExitStatus.POWEROFF, f"migrated to {report.dest}")
            return report

    # -- vCPU state (paused) -------------------------------------------------------
    def _vcpu(self, m: Machine, index: int) -> Any:
        if not 0 <= index < len(m.vcpus):
            raise UsageProblem(f"vCPU {index}: the machine has vCPUs 0 to {len(m.vcpus) - 1}")
        return m.vcpus[index]

    @staticmethod
    def _reg_id(name: str) -> int:
        try:
            return regs.parse(name)
        except (KeyError, ValueError) as e:
            raise UsageProblem(str(e.args[0]) if e.args else f"unknown register {name!r}") from None

    def get_register(self, vcpu: int, name: str) -> int:
        """Register ``name`` of vCPU ``vcpu`` as an unsigned integer (the
        register's whole KVM buffer, little-endian). Names as
        :func:`pyvmm.arm64.regs.parse` takes them: ``X0``, ``PC``, ``SP_EL1``,
        ``V3``, ``Z3``, ``ZA[12]``, ``SCTLR_EL1``. Paused only."""
        with self._lock:
            m = self._paused_machine()
            return self._vcpu(m, vcpu).get_reg(self._reg_id(name))

    def set_register(self, vcpu: int, name: str, value: int) -> None:
        """Write register ``name`` of vCPU ``vcpu`` (see :meth:`get_register`).
        Paused only; the guest sees it when resumed."""
        with self._lock:
            m = self._paused_machine()
            reg = self._reg_id(name)
            size = regs.size_of(reg)
            if not 0 <= value < 1 << (8 * size):
                raise UsageProblem(f"{name}: {value:#x} does not fit the register's {8 * size} bits")
            self._vcpu(m, vcpu).set_reg(reg, value)

    def _vec_state(self, m: Machine, vcpu: int) -> VecState:
        v = self._vcpu(m, vcpu)
        state = self._vec.get(vcpu)
        if state is None:
            from .vecstate import VecState

            state = self._vec[vcpu] = VecState(v, m.sme_bit)
        return state

    def vector_state(self, vcpu: int) -> SavedVecState:
        """The SVE/SME state of vCPU ``vcpu`` (SVCR, Z/P/FFR or V at the
        current mode's length, ZA, ZT0, the SME control registers) as plain
        data, read in the ABI page's rules. Paused only; raises
        :class:`UsageProblem` for a vCPU with neither SVE nor SME."""
        with self._lock:
            return self._vec_state(self._paused_machine(), vcpu).save()

    def set_vector_state(self, vcpu: int, state: SavedVecState) -> None:
        """Write ``state`` (from :meth:`vector_state`, of a vCPU with the
        same vector lengths) into vCPU ``vcpu`` in the ABI page's §6 order
        (SVCR first). Paused only."""
        with self._lock:
            self._vec_state(self._paused_machine(), vcpu).restore(state)

    # -- the end -------------------------------------------------------------------
    def close(self, timeout: float = 30.0) -> None:
        """Stop the guest if it still runs, wait for its threads, and release
        the machine and the KVM fd. Idempotent. Raises :class:`GuestError`
        when the vCPU threads do not end within ``timeout`` seconds."""
        if self._closed:
            return
        if self._thread.is_alive():
            # Parked vCPUs leave at once (the machine is done); the lock is not
            # held while waiting: a reset's on_ready takes it.
            self.stop(None, "closed through the library")
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise GuestError(f"the machine did not stop within {timeout:.0f} s")
        with self._lock:
            if not self._closed:
                self._release()

    def _release(self) -> None:
        self._closed = True
        self._vec = {}
        if self._kvm is not None:
            self._kvm.close()
            self._kvm = None

    def __enter__(self) -> "VirtualMachine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.running else "ended")
        return f"<pyvmm.VirtualMachine {self.config.cpus} vCPUs, {self.config.mem >> 20} MiB, {state}>"


def _console(output: Optional[Output]):
    """The output callable, or one keeping the last :data:`CONSOLE_KEEP` bytes."""
    if output is not None:
        return output, None
    kept = bytearray()
    lock = _threads.Lock()

    def keep(data: bytes) -> None:
        with lock:
            kept.extend(data)
            if len(kept) > CONSOLE_KEEP:
                del kept[:len(kept) - CONSOLE_KEEP]
    return keep, kept


def start(config: MachineConfig, *, output: Optional[Output] = None, paused: bool = False,
         console_input: Optional[int] = None, escape: bool = False,
         on_ready: Optional[Callable[[Machine], None]] = None, payload: Optional[Payload] = None) -> VirtualMachine:
    """Boot the guest ``config`` describes (a kernel, or bare-metal
    ``firmware``) and return its :class:`VirtualMachine` once it is built and
    its vCPUs run (``paused``: wait, stopped, for :meth:`VirtualMachine.resume`).
    A guest reset boots it again when ``config.on_reboot`` is "restart".

    ``output(data)`` gets the guest's console output (called from the
    machine's threads); without it the last MiB is kept
    (:meth:`VirtualMachine.console_output`). ``console_input``: a file
    descriptor whose input goes to the guest's console (``escape``: Ctrl-A x
    stops the guest). ``on_ready(machine)``: called with each
    :class:`pyvmm.machine.Machine` before it runs (the first, and each one a
    reset boots). ``payload``: what :func:`pyvmm.machine.prepare` returned for
    this ``config``, if the caller has it (its kernel header and initrd are
    not read again; ``pyvmm run`` checks them before touching the terminal).
    Raises :class:`UsageProblem` for bad options or files and
    :class:`HostUnsupported` or :class:`KvmError` for what the host cannot
    do; then nothing is left running."""
    out, kept = _console(output)
    session = Session(config, out, console_input, escape, on_ready, start_paused=paused, payload=payload)
    return VirtualMachine(session, console=kept)._start()


def restore(path: str, *, clock: str = "hide", paused: bool = False, output: Optional[Output] = None,
            on_reboot: Optional[str] = None, kvm_path: str = DEFAULT_PATH, console_input: Optional[int] = None,
            escape: bool = False, on_ready: Optional[Callable[[Machine], None]] = None,
            progress: Optional[Callable[[int, int], None]] = None, trace_mmio: bool = False,
            host: Any = None, verify: bool = False) -> VirtualMachine:
    """A new machine in the state saved in the snapshot file ``path`` (by
    :meth:`VirtualMachine.snapshot` or ``pyvmm snapshot``), running (or, with
    ``paused``, stopped until :meth:`VirtualMachine.resume`).

    Everything this host cannot restore is refused, with the reason, before
    a VM exists (:class:`SnapshotError` for a damaged or newer file,
    :class:`HostUnsupported` for vector lengths, SME, ID registers or a timer
    frequency the host cannot present, :class:`UsageProblem` for missing
    disks). ``clock``: "hide" resumes the guest's counters where they
    stopped and hides later pauses too; "keep" advances them by the time
    since the snapshot. ``on_reboot`` overrides the saved "restart"/"exit".
    ``host``: a :class:`pyvmm.snapshot.trust.HostChoice`, the disks (and the
    kernel a reset boots) the caller chooses; without it they come only from
    a snapshot sealed by this user's pyvmm (docs/snapshot-format.md, "Trust").
    ``progress(done, total)`` hears about guest memory being loaded.

    A version-2 file's guest memory is mapped, not read: the guest runs
    before its pages were read, and their CRC-32s are checked by a thread
    while it runs (a chunk that fails stops the VM with the reason); with
    ``verify`` they are all checked first (also whenever a seal is relied
    on). :attr:`VirtualMachine.memory_load` says how memory was loaded. The
    other arguments are :func:`start`'s."""
    from .kvm import open_kvm
    from .snapshot import format as fmt, machine_snapshot

    if clock not in ("hide", "keep"):
        raise UsageProblem(f"clock {clock!r}: choose hide or keep")
    if on_reboot not in (None, "restart", "exit"):
        raise UsageProblem(f"--on-reboot {on_reboot!r}: choose restart or exit")
    snap = fmt.load(path)
    if verify:
        bad = snap.verify_ram()
        if bad:
            snap.close()
            raise SnapshotError(f"snapshot {path}: {bad}", "use an intact copy or take the snapshot again")
    kvm = open_kvm(kvm_path)
    how = []
    try:
        config = machine_snapshot.check(kvm, snap, host)
        config.trace_mmio = trace_mmio
        if on_reboot:
            config.on_reboot = on_reboot

        def build(m: Machine) -> None:
            m.hide_pauses = clock == "hide"  # keep: the guest's clock runs on through pauses too
            how.append(machine_snapshot.restore_into(m, snap, clock, progress))

        out, kept = _console(output)
        session = Session(config, out, console_input, escape, on_ready, first_build=build, start_paused=paused,
                          kvm=kvm)
        vm = VirtualMachine(session, kvm=kvm, console=kept)
    except BaseException:
        kvm.close()
        snap.close()
        raise
    try:
        started = vm._start()
    except BaseException:
        snap.close()
        raise
    started.memory_load = how[0] if how else None
    return started


def _probed_early(kvm_path: str) -> Any:
    """/dev/kvm opened, and the host facts the check and the build probe
    (CNTFRQ, the SME bit) probed through it, while no migration source has
    come yet (each probe creates a scratch VM); None when that fails: then
    it is done again after the source came, which reports why to it."""
    from . import guest_features, hostinfo
    from .kvm import open_kvm

    try:
        kvm = open_kvm(kvm_path)
    except PyvmmError:
        return None
    try:
        hostinfo.cntfrq(kvm)
        guest_features.offered(kvm)
    except PyvmmError:
        pass  # the same probe fails again when needed, with its reason
    except BaseException:
        kvm.close()
        raise
    return kvm


def incoming(dest: Any, *, output: Optional[Output] = None, on_reboot: Optional[str] = None,
             kvm_path: str = DEFAULT_PATH, console_input: Optional[int] = None, escape: bool = False,
             on_ready: Optional[Callable[[Machine], None]] = None, trace_mmio: bool = False,
             host: Any = None, accept_timeout: Optional[float] = None) -> VirtualMachine:
    """Receive a live migration (``pyvmm migrate``, docs/migration.md) and
    return the guest running here. ``dest``: an address (``unix:PATH``,
    ``tcp:[HOST:]PORT``, HOST defaulting to 127.0.0.1) listened on for one
    source, or a :class:`pyvmm.migration.destination.Incoming` already
    listening (or connected). The source's machine is checked as
    :func:`restore` checks a snapshot and refused, with the reason sent to
    the source too, before the source pauses its guest; any failure before
    the guest runs here raises, with nothing left behind (the source's
    guest runs on there). The other arguments are :func:`restore`'s."""
    from .kvm import open_kvm
    from .migration.destination import Incoming

    if on_reboot not in (None, "restart", "exit"):
        raise UsageProblem(f"--on-reboot {on_reboot!r}: choose restart or exit")
    inc = dest if isinstance(dest, Incoming) else Incoming(str(dest))
    vm: Optional[VirtualMachine] = None
    kvm = None
    try:
        if inc.conn is None:
            kvm = _probed_early(kvm_path)
            inc.accept(accept_timeout)
        if kvm is None:
            kvm = open_kvm(kvm_path)
        config = inc.receive_check(kvm, host)
        config.trace_mmio = trace_mmio
        if on_reboot:
            config.on_reboot = on_reboot
        out, kept = _console(output)
        session = Session(config, out, console_input, escape, on_ready, first_build=inc.build, start_paused=True,
                          kvm=kvm)
        vm = VirtualMachine(session, kvm=kvm, console=kept)
        kvm = None  # the VirtualMachine closes it
        vm._start()
        running = vm
        try:
            inc.handover(running.resume)
        except BaseException:
            running.close()
            raise
        return running
    except BaseException as e:
        if vm is None:
            inc.refuse(str(e) if isinstance(e, PyvmmError) else "the destination failed")
        if kvm is not None:
            kvm.close()
        raise
    finally:
        inc.close()

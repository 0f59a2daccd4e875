"""One vCPU thread's run loop (:func:`run_vcpu`) and the exit policy it applies
(:func:`handle_exit`, :func:`run_failure`), which host tests feed synthetic exits."""
from __future__ import annotations

import errno
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Dict, Optional, Tuple, Union

    from .exit_status import ExitStatus

from .._ffi import const, ffi
from ..errors import KvmError, PyvmmError, UsageProblem
from .config import RESET_REASON

if TYPE_CHECKING:
    Verdict = Tuple[ExitStatus, str]
# handle_exit's answer for a signal (KVM_EXIT_INTR): the vCPU may park here
# (Machine.pause); KVM_RUN with immediate_exit has completed any MMIO access.
PAUSE_POINT = "pause point"

_EXIT_MMIO = const("KVM_EXIT_MMIO")
_EXIT_INTR = const("KVM_EXIT_INTR")


def _system_event(kind: int) -> Optional[Verdict]:
    """The verdict for a KVM_SYSTEM_EVENT of type ``kind`` (None: run on). ExitStatus (enum) is
    loaded here, when the guest powers off, resets or crashes, not before it runs (start-up time)."""
    from .exit_status import ExitStatus

    return {
        const("KVM_SYSTEM_EVENT_SHUTDOWN"): (ExitStatus.POWEROFF, "the guest powered off"),
        const("KVM_SYSTEM_EVENT_RESET"): (ExitStatus.RESET, RESET_REASON),
        const("KVM_SYSTEM_EVENT_CRASH"): (ExitStatus.CRASH, "the guest crashed (KVM crash event)"),
    }.get(kind)


# KVM_RUN errnos that mean the guest did something KVM cannot continue from
# (e.g. ENOSYS: a data abort outside RAM and devices without a valid syndrome).
_GUEST_STUCK = (errno.ENOSYS, errno.EFAULT, errno.ENOEXEC)


def handle_exit(run, bus, index: int, counts: Dict[str, int]) -> Union[None, str, Verdict]:
    """What the exit in ``run`` (a ``struct kvm_run *``) means for vCPU
    ``index``: None to run again (an MMIO access, dispatched to ``bus`` and
    completed in ``run``, or a WAKEUP/SUSPEND event, which only capabilities
    pyvmm does not enable produce), :data:`PAUSE_POINT` for a signal, or the
    (status, reason) that ends the machine. Counts the exit in ``counts``."""
    reason = run.exit_reason
    if reason == _EXIT_MMIO:
        counts["mmio"] = counts.get("mmio", 0) + 1
        mmio = run.mmio
        n = mmio.len
        if n > 8:  # kvm_run's mmio.data holds 8 bytes; never trust more (as exits.decode)
            n = 8
        if mmio.is_write:
            bus.write(mmio.phys_addr, ffi.buffer(mmio.data, n)[:])
            return None
        addr = mmio.phys_addr
        fast = bus.fast_reads.get(addr) if n == 4 else None
        if fast is not None and bus.trace is None:  # InterruptStatus, once per interrupt
            ffi.memmove(mmio.data, fast(), 4)
        else:
            ffi.memmove(mmio.data, bus.read(addr, n), n)
        return None
    if reason == _EXIT_INTR:
        counts["intr"] = counts.get("intr", 0) + 1
        return PAUSE_POINT
    from .. import exits  # loaded at the first exit other than MMIO and signals, not to boot (start-up time)

    ex = exits.decode(run)
    if type(ex) is exits.SystemEventExit:
        counts["system_event"] = counts.get("system_event", 0) + 1
        return _system_event(ex.type)
    kind = type(ex).__name__
    counts[kind] = counts.get(kind, 0) + 1
    from .exit_status import ExitStatus

    return ExitStatus.CRASH, f"vcpu{index}: {describe(ex)}"


def run_failure(e: BaseException, index: int) -> Verdict:
    """The (status, reason) a vCPU thread ends the machine with when ``e``
    escaped its loop: the KVM_RUN errno mapping, usage errors, pyvmm bugs."""
    from .exit_status import ExitStatus

    if isinstance(e, KvmError):
        if e.ioctl == "KVM_RUN" and e.errno in _GUEST_STUCK:
            return ExitStatus.CRASH, (f"vcpu{index}: the guest did something KVM cannot "
                                      f"continue from ({e.message})")
        return ExitStatus.ERROR, f"vcpu{index}: {e}"
    if isinstance(e, PyvmmError):
        return (ExitStatus.USAGE if isinstance(e, UsageProblem) else ExitStatus.ERROR), f"vcpu{index}: {e}"
    return ExitStatus.ERROR, f"vcpu{index}: internal error: {type(e).__name__}: {e}"


def describe(ex) -> str:
    """One line for an exit pyvmm cannot continue from."""
    from .. import exits

    if isinstance(ex, exits.FailEntryExit):
        return f"KVM could not enter the guest (FAIL_ENTRY, reason {ex.reason:#x})"
    if isinstance(ex, exits.InternalErrorExit):
        return f"KVM internal error (suberror {ex.suberror})"
    if isinstance(ex, exits.NisvExit):
        return (f"the guest accessed {ex.fault_ipa:#x} in a way KVM cannot emulate "
                f"(data abort without syndrome, ESR ISS {ex.esr_iss:#x}); it is not RAM or an emulated device")
    if isinstance(ex, exits.OtherExit):
        return f"unexpected exit {ex.name or ex.reason}"
    return repr(ex)


def run_vcpu(machine, vcpu) -> None:
    """The body of vCPU ``vcpu``'s thread: KVM_RUN (prepared once by the fd
    layer) until ``machine`` is done, the coalesced ring drained before each
    exit is handled (earlier writes first), parking at pause points while
    ``machine`` is paused. Ends the machine on a verdict or a failure."""
    counts: Dict[str, int] = {}  # a dict, not a Counter: collections loads after the run
    run, bus, index = vcpu.run_struct, machine.bus, vcpu.index
    ring = machine.coalesced
    done = machine.done
    try:
        kvm_run = vcpu.prepare_run()  # inside the try: a failure here ends the machine too
        if machine.first_run_ns is None:
            machine.first_run_ns = time.monotonic_ns()
        machine.entered.set()  # Machine.run starts its other threads now
        while not done.is_set():
            try:
                kvm_run()
            except KvmError as e:
                if e.errno != errno.EINTR:
                    raise
                counts["intr"] = counts.get("intr", 0) + 1
                verdict: Union[None, str, Verdict] = PAUSE_POINT
            else:
                if ring is not None and ring.pending():
                    ring.drain()
                verdict = handle_exit(run, bus, index, counts)
            if verdict is None:
                continue
            if isinstance(verdict, str):  # PAUSE_POINT, the only string verdict
                machine.pause_point(vcpu)
                continue
            machine.finish(*verdict)
    except Exception as e:  # noqa: BLE001 (every failure ends the machine with its reason)
        machine.finish(*run_failure(e, index))
    finally:
        machine.record_exits(counts)

"""The signal that kicks a vCPU thread out of KVM_RUN (:data:`KICK_SIGNAL`)
and the handler it needs, installed from any thread (:func:`ensure_handler`).

A vCPU thread inside KVM_RUN (the guest running, or idle in WFI) returns to
userspace only when a signal is delivered to it: KVM_RUN then fails with
EINTR (with ``immediate_exit`` set it also completes a pending MMIO access
first). The signal needs a handler: its default action would end the
process, and an ignored signal is discarded without interrupting anything.
Python's :func:`signal.signal` installs handlers only from the main thread,
so a machine run from any other thread (the library, :mod:`pyvmm.api`) could
not count on one. :func:`ensure_handler` therefore installs, through libc and
from whatever thread, a C handler that does nothing (libc's ``abs``, which
takes the signal number and has no effect) when the signal has no handler,
and leaves a handler already there (Python's, or the caller's) alone. It is
left installed: a second machine, or one in another thread, needs it too.
"""
from __future__ import annotations

from .. import _threads

from .._ffi import ffi, libc

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # signal's C core: the same calls with int numbers, without enum (start-up time)

KICK_SIGNAL = signal.SIGUSR1
_SIG_DFL, _SIG_IGN = 0, 1
_lock = _threads.Lock()


def _address(handler) -> int:
    return int(ffi.cast("intptr_t", handler))


def ensure_handler() -> None:
    """Make sure :data:`KICK_SIGNAL` has a handler (callable from any
    thread; cheap: two ``signal`` calls). A handler that is already installed
    is kept; the default action or "ignore" is replaced by the no-op one."""
    lib = libc()
    noop = ffi.cast("sighandler_t", lib.abs)
    with _lock:
        old = lib.signal(KICK_SIGNAL, noop)
        if _address(old) == -1:  # SIG_ERR: cannot happen for SIGUSR1; say so rather than run unkickable
            raise OSError(ffi.errno, f"signal({int(KICK_SIGNAL)}) failed")
        if _address(old) not in (_SIG_DFL, _SIG_IGN, _address(noop)):
            lib.signal(KICK_SIGNAL, old)  # someone's handler (e.g. Python's): it interrupts KVM_RUN as well


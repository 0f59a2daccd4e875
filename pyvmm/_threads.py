"""Threads, locks, events and a condition on the interpreter's ``_thread``
module, for the modules ``pyvmm run`` loads before its guest runs.

``threading`` loads ``warnings``, ``_weakrefset`` and ``types`` (3.13; 3.11
also ``functools`` and ``collections``): about 35 ms before the first KVM_RUN
in the emulated test machine (``python3 -X importtime``, issue 13 item 5,
docs/benchmarks.md). What pyvmm needs of it is small: daemon threads it joins
itself, and waits with timeouts. Threads started here are not in
``threading.enumerate()``; :func:`alive` names the ones still running.
"""
from __future__ import annotations

import _thread
import os as _os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional

Lock = _thread.allocate_lock
RLock = _thread.RLock
get_ident = _thread.get_ident

_running: Dict[int, "Thread"] = {}  # by id(), from start() until their target returned


def alive() -> List[str]:
    """The names of the threads started here whose target has not returned."""
    return [t.name for t in list(_running.values())]


def _wait_for(lock: Any, timeout: Optional[float]) -> bool:
    """Acquire ``lock`` within ``timeout`` seconds (None: no limit); True if it was."""
    if timeout is None:
        return lock.acquire()
    return lock.acquire(True, max(timeout, 0.0))


def _name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the kernel too (its first 15 bytes: what
    ``top -H``, ``ps -L`` and ``/proc/PID/task/TID/comm`` show; Python before 3.14
    leaves every thread named after the program). Best effort: no procfs, no name."""
    try:
        fd = _os.open("/proc/thread-self/comm", _os.O_WRONLY | _os.O_CLOEXEC)
    except OSError:
        return
    try:
        _os.write(fd, name.encode(errors="replace")[:15])
    except OSError:
        pass
    finally:
        _os.close(fd)


def start_daemon(target: Callable[..., Any], args: tuple = (), name: str = "pyvmm") -> Any:
    """A started ``threading.Thread`` (daemon) running ``target(*args)``, named ``name`` in
    the kernel too, for the modules that use ``threading`` (loaded after the guest runs)."""
    import threading

    def run() -> None:
        _name_os_thread(name)
        target(*args)
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t


class Thread:
    """A daemon thread running ``target(*args)`` (an exception it raises is
    printed by :data:`sys.unraisablehook`), named ``name`` in the kernel too;
    joined by :meth:`join`."""

    def __init__(self, target: Callable[..., Any], args: tuple = (), name: str = "pyvmm"):
        self._target, self._args, self.name = target, args, name
        self.ident: Optional[int] = None
        self._finished = Lock()  # held from start() until the target returned

    def start(self) -> None:
        if self.ident is not None:
            raise RuntimeError(f"thread {self.name} started twice")
        self._finished.acquire()
        _running[id(self)] = self
        try:
            self.ident = _thread.start_new_thread(self._main, ())
        except BaseException:
            _running.pop(id(self), None)
            self._finished.release()
            raise

    def _main(self) -> None:
        try:
            _name_os_thread(self.name)
            self._target(*self._args)
        finally:
            _running.pop(id(self), None)
            self._finished.release()

    def is_alive(self) -> bool:
        return self.ident is not None and self._finished.locked()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait until the target returned (or ``timeout`` seconds passed: see :meth:`is_alive`)."""
        if self.ident is None:
            raise RuntimeError(f"thread {self.name} was not started")
        if _wait_for(self._finished, timeout):
            self._finished.release()


class Event:
    """A flag threads wait for: :meth:`set`, :meth:`clear`, :meth:`wait`."""

    def __init__(self) -> None:
        self._flag = False
        self._mutex = Lock()
        self._unset = Lock()  # held while the flag is clear: waiters block on it
        self._unset.acquire()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._mutex:
            if not self._flag:
                self._flag = True
                self._unset.release()

    def clear(self) -> None:
        with self._mutex:
            if self._flag:
                self._unset.acquire()  # a waiter holds it only for an instant
                self._flag = False

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once the flag is set; False if ``timeout`` seconds passed first."""
        if self._flag:
            return True
        if _wait_for(self._unset, timeout):
            self._unset.release()
            return True
        return self._flag


class Condition:
    """A condition variable on a re-entrant lock: ``with cond:``, then
    :meth:`wait` (releases the lock meanwhile) and :meth:`notify_all`."""

    def __init__(self) -> None:
        self._lock: Any = RLock()  # its _release_save/_acquire_restore are what threading.Condition uses too
        self._waiters: List[Any] = []

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait (the lock released, however often it was entered) for :meth:`notify_all`
        or ``timeout`` seconds; the lock is held again on return. True if notified."""
        waiter = Lock()
        waiter.acquire()
        self._waiters.append(waiter)
        saved = self._lock._release_save()
        notified = False
        try:
            notified = _wait_for(waiter, timeout)
        finally:
            self._lock._acquire_restore(saved)
            if not notified:
                try:
                    self._waiters.remove(waiter)
                except ValueError:  # notified just after the wait ended
                    pass
        return notified

    def notify_all(self) -> None:
        """Wake every thread waiting (call with the lock held)."""
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.release()

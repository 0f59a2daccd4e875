"""The I/O thread: one host thread that waits on eventfds and runs the
handler of each that fires.

It serves the queues of the devices emulated in Python (console, blk, rng):
their queue notifies reach it as KVM_IOEVENTFD signals and their interrupt
resample requests as KVM_IRQFD resamplefd signals, so a vCPU writing
QueueNotify never leaves the kernel. Handlers run one at a time under
``lock`` (the machine's I/O lock, which a snapshot also holds), so a saved
machine never sees a request half handled.
"""
from __future__ import annotations

import os
import select
from .. import _threads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional


def eventfd() -> int:
    """A non-blocking, close-on-exec eventfd."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def drain(fd: int) -> int:
    """Read (and so reset) an eventfd's counter; 0 when it was not signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def bound(call: Callable[[Any], None], arg: Any) -> Callable[[], None]:
    """A handler taking no arguments that calls ``call(arg)`` (``functools.partial`` without
    loading functools, start-up time)."""
    return lambda: call(arg)


class IoThread:
    def __init__(self, lock, on_error: Callable[[BaseException], None]):
        self._lock = lock
        self._on_error = on_error
        self._handlers: Dict[int, Callable[[], None]] = {}
        self._kicks: Dict[int, Callable[[], None]] = {}
        self._hangups: Dict[int, Callable[[], None]] = {}
        self._readers: Dict[int, Callable[[], None]] = {}
        self._epoll = select.epoll()
        self._wake = eventfd()
        self._epoll.register(self._wake, select.EPOLLIN)
        self._stopping = False
        self._thread: Optional[_threads.Thread] = None
        self.wakeups = 0

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        """Run ``handler()`` (under the lock) each time eventfd ``fd`` is
        signalled; the thread reads (resets) the counter first."""
        self._handlers[fd] = handler
        self._epoll.register(fd, select.EPOLLIN)

    def add_kick(self, fd: int, handler: Callable[[], None]) -> None:
        """:meth:`add` for a queue's notify eventfd, whose counter nobody
        reads: edge-triggered, so a notify costs no read(2). epoll reports an
        eventfd again at each write to it (every write wakes its waiters),
        so ``handler()`` runs at least once after any number of notifies;
        the counter only grows (2**64 notifies from overflowing)."""
        self._kicks[fd] = handler
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Run ``handler()`` (under the lock) while ``fd`` is readable; the
        handler reads it, or calls :meth:`enable` (False) until it can."""
        self._readers[fd] = handler
        self._epoll.register(fd, select.EPOLLIN)

    def enable(self, fd: int, on: bool) -> None:
        """Resume or suspend watching a :meth:`watch` fd (any thread)."""
        if fd in self._readers:
            self._epoll.modify(fd, select.EPOLLIN if on else 0)

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` (any kind); its owner closes it."""
        for table in (self._kicks, self._handlers, self._readers, self._hangups):
            table.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def watch_hangup(self, fd: int, handler: Callable[[], None]) -> None:
        """Run ``handler()`` once when the peer of socket ``fd`` hangs up."""
        self._hangups[fd] = handler
        self._epoll.register(fd, select.EPOLLRDHUP)

    def start(self) -> None:
        if self._thread is None:
            self._thread = _threads.Thread(target=self._loop, name="virtio-io")
            self._thread.start()

    def _loop(self) -> None:
        while not self._stopping:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                # queue notifies first: the common case, and a vCPU may be
                # spinning until its buffer is used (virtio-console's hvc)
                handler: Optional[Callable[[], None]] = self._kicks.get(fd)
                if handler is not None:
                    pass  # nothing to read (add_kick)
                elif fd in self._handlers:
                    if not drain(fd):
                        continue
                    handler = self._handlers[fd]
                elif fd == self._wake:
                    drain(fd)
                    continue
                elif fd in self._hangups:
                    handler = self._hangups.pop(fd)
                    self._epoll.unregister(fd)
                elif fd in self._readers:
                    handler = self._readers[fd]
                else:
                    continue
                self.wakeups += 1
                try:
                    with self._lock:
                        handler()
                except Exception as e:  # a bug or a host failure: the machine stops
                    self._on_error(e)
                    return

    def stop(self) -> None:
        """Stop and join the thread; the eventfds stay open (their owners close them)."""
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None and self._thread.ident != _threads.get_ident():
            self._thread.join()
        self._thread = None

    def close(self) -> None:
        self.stop()
        self._epoll.close()
        os.close(self._wake)

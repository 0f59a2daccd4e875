"""The console's host side: input read from a file descriptor with the
Ctrl-A escape (:class:`ConsoleInput`) and output batched per coalesced drain
(:class:`OutputBuffer`)."""
from __future__ import annotations

import os
import select
from .. import _threads
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Callable, Optional



class ConsoleInput:
    """Reads host input and hands it to the current machine's console.
    In raw terminal mode, Ctrl-A x stops the guest and Ctrl-A Ctrl-A sends Ctrl-A."""

    ESCAPE = 0x01

    def __init__(self, fd: Optional[int], escape: bool = False):
        self.fd = fd
        self.escape = escape
        self.sink: Optional[Callable[[bytes], int]] = None
        self.on_escape: Optional[Callable[[], None]] = None
        self._stop = _threads.Event()
        self._pending_escape = False
        self._thread: Optional[_threads.Thread] = None

    def start(self) -> None:
        """Start reading (once: later calls do nothing)."""
        if self.fd is None or self._thread is not None:
            return
        self._thread = _threads.Thread(target=self._loop, name="console-input")
        self._thread.start()

    def _loop(self) -> None:
        fd = self.fd
        assert fd is not None  # start() runs the loop only with an fd
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([fd], [], [], 0.2)
                if not r:
                    continue
                data = os.read(fd, 4096)
            except (OSError, ValueError):
                return
            if not data:
                return  # EOF: no more input
            if self.escape:
                data = self._filter(data)
            while data and not self._stop.is_set():
                sink = self.sink
                taken = sink(data) if sink else 0
                data = data[taken:]
                if data:
                    time.sleep(0.01)  # the guest is not reading: wait for room

    def _filter(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self._pending_escape:
                self._pending_escape = False
                if b in (ord("x"), ord("X")):
                    if self.on_escape:
                        self.on_escape()
                    continue
                if b == self.ESCAPE:
                    out.append(b)
                    continue
                out += bytes((self.ESCAPE, b))
            elif b == self.ESCAPE:
                self._pending_escape = True
            else:
                out.append(b)
        return bytes(out)

    def stop(self) -> None:
        self._stop.set()


class OutputBuffer:
    """Console output collected while a batch of guest writes is replayed
    (one coalesced-MMIO drain), then written at once: one write(2) per batch
    instead of one per byte."""

    def __init__(self, output: Callable[[bytes], None]):
        self._output = output
        self._buf = bytearray()
        self._lock = _threads.Lock()
        self.batching = 0

    def write(self, data: bytes) -> None:
        if not self.batching:
            self._output(data)
            return
        with self._lock:
            self._buf += data

    def flush(self) -> None:
        with self._lock:
            if not self._buf:
                return
            data = bytes(self._buf)
            self._buf.clear()
        self._output(data)

"""Where the guest's console goes (``pyvmm run --console-out``).

    tty        this process's terminal (stdin/stdout): the default
    pty        a new pseudo-terminal (its name is reported; e.g. ``screen /dev/pts/3``),
               input and output; the terminal is left alone
    unix:PATH  a unix socket, mode 0600, that pyvmm listens on; one client at a time
               has the console (input and output); another is told it is busy
    file:PATH  output appended to PATH (created mode 0600); no console input

Each endpoint gives the machine an ``output(data)`` callable and an input fd
(or None) that :class:`pyvmm.machine.ConsoleInput` reads. Output to a pty
or socket never blocks the guest: what the reader does not take in time is
dropped and counted (``dropped``), so a console nobody reads cannot stall a
vCPU. Whatever an endpoint opens (fds, the socket file, its thread) is gone
after :meth:`close`.
"""
from __future__ import annotations

import os
import select
import stat
from . import _threads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import List, Optional, Union

from .errors import UsageProblem

if TYPE_CHECKING:  # socket and unix_socket are loaded only for a unix: console (start-up time)
    import socket

class Endpoint:
    """The terminal: nothing to open (the CLI supplies stdin/stdout)."""

    kind = "tty"
    input_fd: Optional[int] = None
    name = "this terminal"

    def __init__(self):
        self.dropped = 0

    def output(self, data: bytes) -> None:  # pragma: no cover - the CLI uses its own writer for tty
        raise NotImplementedError

    def close(self) -> None:
        pass


def _write_nonblocking(fd: int, data: bytes) -> int:
    """Write what fits now; return the bytes not written (dropped)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            return len(view)
        except OSError:
            return len(view)
        view = view[n:]
    return 0


class PtyEndpoint(Endpoint):
    kind = "pty"

    def __init__(self):
        super().__init__()
        master, slave = os.openpty()
        self._slave_name = os.ttyname(slave)
        # Raw: the guest's bytes pass unchanged both ways (no echo, no CR/LF mapping).
        import termios
        import tty

        tty.setraw(slave, termios.TCSANOW)
        # pyvmm keeps the slave open too: the master then never sees a hang-up
        # (EIO) when the user's program closes it, and a new one can attach.
        os.set_inheritable(slave, False)
        self._slave = slave
        os.set_blocking(master, False)
        os.set_inheritable(master, False)
        self._master = master
        self.input_fd = master
        self.name = self._slave_name

    def output(self, data: bytes) -> None:
        self.dropped += _write_nonblocking(self._master, data)

    def close(self) -> None:
        if self._master >= 0:
            os.close(self._master)
            os.close(self._slave)
            self._master = self._slave = -1
            self.input_fd = None


class FileEndpoint(Endpoint):
    kind = "file"

    def __init__(self, path: str):
        super().__init__()
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise UsageProblem(f"--console-out file:{path}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise UsageProblem(f"--console-out file:{path}: not a regular file")
        self.name = path

    def output(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view):]
            except OSError:
                self.dropped += len(view)  # disk full: the guest runs on
                return

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class UnixEndpoint(Endpoint):
    """Listens on PATH; the connected client's input is pumped into a pipe
    (``input_fd``), so console input has back-pressure like a terminal."""

    kind = "unix"
    BUSY = b"pyvmm: the console is taken by another client\r\n"

    def __init__(self, path: str):
        import socket

        from .unix_socket import listen_private

        super().__init__()
        self.path = os.path.abspath(path)
        self.name = self.path
        self._send_flags = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
        self._sock = listen_private(self.path, "--console-out unix:", 2)
        self._rpipe, self._wpipe = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._wpipe, False)
        self.input_fd = self._rpipe
        self._client: Optional[socket.socket] = None
        self._lock = _threads.Lock()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread: Optional[_threads.Thread] = _threads.Thread(target=self._loop, name="console-unix")
        self._thread.start()

    def output(self, data: bytes) -> None:
        with self._lock:
            c = self._client
            if c is None:
                self.dropped += len(data)
                return
            view = memoryview(data)
            while view:
                try:
                    n = c.send(view, self._send_flags)
                except (BlockingIOError, InterruptedError):
                    self.dropped += len(view)
                    return
                except OSError:
                    self.dropped += len(view)
                    return
                view = view[n:]

    def _loop(self) -> None:
        pending = b""  # client input the guest has not taken yet: not read further until it has
        while True:
            c = self._client
            rfds: List[Union[int, socket.socket]] = [self._sock, self._stop_r]
            if c is not None and not pending:
                rfds.append(c)
            wfds = [self._wpipe] if pending else []
            try:
                ready, writable, _ = select.select(rfds, wfds, [])
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            if writable:
                try:
                    pending = pending[os.write(self._wpipe, pending):]
                except BlockingIOError:
                    pass
                except OSError:
                    return
            if self._sock in ready:
                self._accept()
            if c is not None and c in ready:
                try:
                    data = c.recv(4096)
                except OSError:
                    data = b""
                if data:
                    pending = data
                else:
                    with self._lock:
                        self._client = None
                    c.close()

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        with self._lock:
            if self._client is None:
                self._client = conn
                return
        try:
            conn.sendall(self.BUSY)
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self._thread = None
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        self._sock.close()
        for fd in (self._rpipe, self._wpipe, self._stop_r, self._stop_w):
            os.close(fd)
        self.input_fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def parse(spec: Optional[str]) -> str:
    """Check a --console-out value's form (nothing is opened): tty, pty,
    unix:PATH or file:PATH."""
    spec = spec or "tty"
    kind, sep, path = spec.partition(":")
    if kind in ("tty", "pty") and not sep:
        return spec
    if kind in ("unix", "file") and sep and path:
        return spec
    raise UsageProblem(f"--console-out {spec!r}: choose tty, pty, unix:PATH or file:PATH")


def open_endpoint(spec: Optional[str]) -> Endpoint:
    """The endpoint for a --console-out value."""
    spec = parse(spec)
    kind, _, path = spec.partition(":")
    if kind == "pty":
        return PtyEndpoint()
    if kind == "unix":
        return UnixEndpoint(path)
    if kind == "file":
        return FileEndpoint(path)
    return Endpoint()

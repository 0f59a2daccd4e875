"""A listening unix stream socket only its owner may use (the control
socket, the console socket): created mode 0600 with no window in which
others may connect; a stale socket of a killed VMM is replaced, a live one
or any other file in the way is refused."""
from __future__ import annotations

import os
import socket
import stat
import time
from typing import Callable, Optional

from .errors import UsageProblem

SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


def check_path(path: str, label: str) -> None:
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise UsageProblem(f"{label} {path} is longer than {SUN_PATH_MAX} bytes",
                           "use a shorter path, e.g. in /tmp or the current directory")


def is_live(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def listen_private(path: str, label: str, backlog: int) -> socket.socket:
    """A socket listening on ``path`` (mode 0600). ``label`` names the option
    in errors (``--control PATH``)."""
    check_path(path, label)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise UsageProblem(f"{label} {path}: a file that is not a socket is in the way",
                               "choose another path or remove it")
        if is_live(path):
            raise UsageProblem(f"{label} {path}: another VMM is listening there")
        os.unlink(path)  # a stale socket of a VMM that was killed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # created 0600: no window in which others may connect
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise UsageProblem(f"{label} {path}: {e.strerror}") from None
    finally:
        os.umask(old)
    sock.listen(backlog)
    return sock


class SocketNotUp(Exception):
    """:func:`wait_for_socket` gave up: ``died`` is why the process is gone
    (None: it still runs and the time ran out)."""

    def __init__(self, path: str, died: Optional[str], timeout: float):
        super().__init__(f"{path}: {died}" if died is not None else f"{path} not up within {timeout:.0f} s")
        self.died = died


def wait_for_socket(path: str, timeout: float, died: Callable[[], Optional[str]], connect: bool = False,
                    poll: float = 0.01) -> Optional[socket.socket]:
    """Wait for a process that is starting to create unix socket ``path``
    (``connect``: and to accept a connection, which is returned). ``died()``
    says why the process is gone, None while it runs; SocketNotUp when it
    is gone or ``timeout`` seconds passed. Without ``connect`` nothing
    connects (a daemon serving a single front-end, such as virtiofsd, would
    take the probe for its one client)."""
    deadline = time.monotonic() + timeout
    while True:
        if os.path.exists(path):
            if not connect:
                return None
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(path)
                return s
            except OSError:
                s.close()
        why = died()
        if why is not None:
            raise SocketNotUp(path, why, timeout)
        if time.monotonic() > deadline:
            raise SocketNotUp(path, None, timeout)
        time.sleep(poll)

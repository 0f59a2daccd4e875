"""A listening unix stream socket only its owner may use (the control
socket, the console socket): created mode 0600 with no window in which
others may connect; a stale socket of a killed VMM is replaced, a live one
or any other file in the way is refused."""
from __future__ import annotations

import os
import socket
import stat

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

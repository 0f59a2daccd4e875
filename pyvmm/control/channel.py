"""The control socket of a running VM (``pyvmm run --control PATH``).

A unix stream socket, mode 0600 (only its owner may pause a guest or copy
its memory). One request per connection, one JSON object per line:

    request   {"cmd": "status" | "pause" | "resume" | "snapshot" | "stop", ...}
    replies   zero or more {"progress": [done, total], "what": "memory"}
              then exactly one {"ok": true, ...} or {"ok": false, "error": "..."}

``snapshot`` takes {"path": ABSOLUTE_PATH, "stop": bool}. The server handles
one connection at a time, so requests never interleave.

:class:`ControlServer` runs in the VMM (a thread); :func:`call` is the client
(``pyvmm snapshot``, ``pyvmm pause`` ...). Neither prints.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading
from typing import Callable, Dict, Optional

from ..errors import PyvmmError, UsageProblem

MAX_LINE = 1 << 20
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux

Handler = Callable[[Dict, Callable[[Dict], None]], Dict]


class ControlError(PyvmmError):
    """The VMM refused or failed a control request (its reason is the message)."""


def _check_path(path: str) -> None:
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise UsageProblem(f"control socket path {path} is longer than {_SUN_PATH_MAX} bytes",
                           "use a shorter path, e.g. in /tmp or the current directory")


def _live(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class ControlServer:
    """Listens on ``path`` and calls ``handler(request, send)`` for each
    request; ``send`` streams progress objects before the final reply."""

    def __init__(self, path: str, handler: Handler):
        _check_path(path)
        self.path = os.path.abspath(path)
        self.handler = handler
        if os.path.lexists(self.path):
            st = os.lstat(self.path)
            if not stat.S_ISSOCK(st.st_mode):
                raise UsageProblem(f"--control {path}: a file that is not a socket is in the way",
                                   "choose another path or remove it")
            if _live(self.path):
                raise UsageProblem(f"--control {path}: another VMM is listening there")
            os.unlink(self.path)  # a stale socket of a VMM that was killed
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # created 0600: no window in which others may connect
        try:
            self.sock.bind(self.path)
        except OSError as e:
            self.sock.close()
            raise UsageProblem(f"--control {path}: {e.strerror}") from None
        finally:
            os.umask(old)
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(None)
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        def send(obj: Dict) -> None:
            conn.sendall(json.dumps(obj).encode() + b"\n")

        try:
            line = _read_line(conn)
            try:
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                    raise ValueError("not an object with a cmd")
            except ValueError as e:
                send({"ok": False, "error": f"bad request ({e})"})
                return
            try:
                reply = self.handler(request, send)
            except PyvmmError as e:
                reply = {"ok": False, "error": str(e)}
            except Exception as e:  # a bug: answer, keep the VM and the server alive
                reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
            send(reply)
        except OSError:
            pass  # the client went away; the guest is unaffected

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _read_line(conn: socket.socket) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise OSError(errno.EMSGSIZE, "line too long")
    return bytes(buf.split(b"\n", 1)[0])


def call(path: str, request: Dict, on_progress: Optional[Callable[[int, int, str], None]] = None,
         timeout: Optional[float] = None) -> Dict:
    """Send one request to the VMM listening on ``path``; return its final
    reply. Raises UsageProblem when nothing listens there and ControlError
    when the VMM refuses."""
    _check_path(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise UsageProblem(f"no control socket at {path}",
                               "start the VM with pyvmm run --control PATH") from None
        except ConnectionRefusedError:
            raise UsageProblem(f"no VMM is listening on {path} (it has exited)") from None
        except PermissionError:
            raise UsageProblem(f"{path}: permission denied (the socket belongs to another user)") from None
        except OSError as e:
            raise UsageProblem(f"{path}: {e.strerror}") from None
        s.settimeout(timeout)
        s.sendall(json.dumps(request).encode() + b"\n")
        f = s.makefile("rb")
        while True:
            line = f.readline(MAX_LINE)
            if not line:
                raise ControlError(f"the VMM on {path} closed the connection without answering "
                                   "(it stopped or crashed)")
            try:
                msg = json.loads(line)
            except ValueError:
                raise ControlError(f"the VMM on {path} sent a malformed reply") from None
            if "progress" in msg:
                if on_progress:
                    done, total = msg["progress"]
                    on_progress(int(done), int(total), str(msg.get("what", "")))
                continue
            if not msg.get("ok"):
                raise ControlError(str(msg.get("error", "request refused")))
            return msg
    finally:
        s.close()

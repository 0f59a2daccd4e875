"""The control socket of a running VM (``pyvmm run --control PATH``).

A unix stream socket, mode 0600 (only its owner may pause a guest or copy
its memory). One request per connection, one JSON object per line:

    request   {"cmd": "status" | "pause" | "resume" | "snapshot" | "stop", ...}
    replies   zero or more {"progress": [done, total], "what": "memory"}
              then exactly one {"ok": true, ...} or {"ok": false, "error": "..."}

``snapshot`` takes {"path": ABSOLUTE_PATH, "stop": bool}.

Bounds (a client is outside input, like a snapshot file): a request is at
most MAX_REQUEST bytes and MAX_DEPTH levels of nesting, plain JSON (no NaN
or Infinity), and must arrive within REQUEST_TIMEOUT seconds of connecting;
a reply the client does not read within SEND_TIMEOUT is dropped (the
request itself completes). Each connection is served by its own thread, at
most MAX_CLIENTS at once (more are answered "busy"), so a silent or slow
client never blocks the others; the handler serialises what touches the
machine. A bad request is answered with the reason and never ends the
server.

:class:`ControlServer` runs in the VMM (threads); :func:`call` is the client
(``pyvmm snapshot``, ``pyvmm pause`` ...). Neither prints.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from typing import Callable, Dict, List, Optional, Set

from .. import _threads
from ..devices.state import loads
from ..errors import PyvmmError, UsageProblem
from ..unix_socket import check_path, listen_private

MAX_LINE = 1 << 20  # the longest reply line the client reads
MAX_REQUEST = 64 << 10
MAX_DEPTH = 16
MAX_CLIENTS = 8
REQUEST_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0

# A handler returns the final reply, or None when it sent it itself (through
# ``send``, before something that must come after the reply).
Handler = Callable[[Dict, Callable[[Dict], None]], Optional[Dict]]


class ControlError(PyvmmError):
    """The VMM refused or failed a control request (its reason is the message)."""


class RequestError(ValueError):
    """A request that is not one (the reason is the message)."""


def parse_request(line: bytes) -> Dict:
    """The request object in ``line`` (without its newline), checked for
    size, nesting, encoding and shape before and after json decodes it;
    RequestError with the reason otherwise."""
    if len(line) > MAX_REQUEST:
        raise RequestError(f"request longer than {MAX_REQUEST} bytes")
    try:
        request = loads(line, "request", MAX_DEPTH)
    except UsageProblem as e:
        raise RequestError(e.message) from None
    if not isinstance(request, dict):
        raise RequestError(f"request is a JSON {type(request).__name__}, not an object")
    if not isinstance(request.get("cmd"), str):
        raise RequestError('request has no "cmd" string')
    return request


class ControlServer:
    """Listens on ``path`` and calls ``handler(request, send)`` for each
    request; ``send`` streams progress objects before the final reply."""

    def __init__(self, path: str, handler: Handler):
        self.path = os.path.abspath(path)
        self.handler = handler
        self.sock = listen_private(self.path, "--control", MAX_CLIENTS)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._clients: Set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        self.request_timeout = REQUEST_TIMEOUT
        self.send_timeout = SEND_TIMEOUT

    def start(self) -> None:
        self._thread = _threads.start_daemon(self._loop, (), "control")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if self._stop.is_set() or e.errno == errno.EBADF:
                    return
                time.sleep(0.1)  # e.g. EMFILE: the server goes on, the client retries
                continue
            with self._clients_lock:
                busy = len(self._clients) >= MAX_CLIENTS
                if not busy:
                    self._clients.add(conn)
            if busy:
                _refuse(conn, f"busy: {MAX_CLIENTS} clients are connected; try again")
                continue
            _threads.start_daemon(self._client, (conn,), "control-client")

    def _client(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        except Exception:  # noqa: BLE001 -- nothing a client does may end the server
            pass
        finally:
            with self._clients_lock:
                self._clients.discard(conn)
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        dead: List[bool] = []

        def send(obj: Dict) -> None:
            """Best effort: a client that stopped reading loses its replies,
            the request (a snapshot, say) still completes."""
            if dead:
                return
            try:
                conn.settimeout(self.send_timeout)
                conn.sendall(json.dumps(obj).encode() + b"\n")
            except OSError:
                dead.append(True)

        try:
            line = _read_line(conn, time.monotonic() + self.request_timeout)
            request = parse_request(line)
        except RequestError as e:
            send({"ok": False, "error": f"bad request: {e}"})
            return
        except OSError:
            return  # the client went away or said nothing in time
        try:
            reply = self.handler(request, send)
        except PyvmmError as e:
            reply = {"ok": False, "error": str(e)}
        except Exception as e:  # a bug: answer, keep the VM and the server alive
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        if reply is not None:
            send(reply)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        with self._clients_lock:
            for conn in self._clients:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # their threads end at once
                except OSError:
                    pass
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _refuse(conn: socket.socket, why: str) -> None:
    try:
        conn.settimeout(1.0)
        conn.sendall(json.dumps({"ok": False, "error": why}).encode() + b"\n")
    except OSError:
        pass
    finally:
        conn.close()


def _read_line(conn: socket.socket, deadline: float) -> bytes:
    """One request line, at most MAX_REQUEST bytes, complete by ``deadline``."""
    buf = bytearray()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no request in time")
        conn.settimeout(left)
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST + 1 and b"\n" not in buf[:MAX_REQUEST + 1]:
            raise RequestError(f"request longer than {MAX_REQUEST} bytes")
    return bytes(buf.split(b"\n", 1)[0])


def call(path: str, request: Dict, on_progress: Optional[Callable[[int, int, str], None]] = None,
         timeout: Optional[float] = None) -> Dict:
    """Send one request to the VMM listening on ``path``; return its final
    reply. Raises UsageProblem when nothing listens there and ControlError
    when the VMM refuses."""
    check_path(path, "control socket")
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
        return _exchange(s, path, request, on_progress)
    finally:
        s.close()


def _exchange(s: socket.socket, path: str, request: Dict,
              on_progress: Optional[Callable[[int, int, str], None]]) -> Dict:
    """Send ``request`` on the connected ``s``; read replies up to the final one."""
    try:
        s.sendall(json.dumps(request).encode() + b"\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the VMM refused the connection ("busy") and closed it first: its answer is still there
    f = s.makefile("rb")
    try:
        while True:
            try:
                line = f.readline(MAX_LINE)
            except ConnectionResetError:
                line = b""
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
        f.close()

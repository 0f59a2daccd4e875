"""Where a migration stream goes: ``unix:PATH`` or ``tcp:[HOST:]PORT``
parsed, connected (source) or listened on for exactly one connection
(destination), and a :class:`Conn` that sends whole buffers and receives
exact lengths, each step bounded by a timeout (a peer that stops reading or
writing is a failure, not a hang)."""
from __future__ import annotations

import os
import select
import socket
import time
from typing import NamedTuple, Optional, Sequence, Tuple, Union, cast

from ..errors import PyvmmError, UsageProblem
from ..unix_socket import check_path, listen_private

DEFAULT_TCP_HOST = "127.0.0.1"


class PeerError(PyvmmError):
    """The peer went away, stopped answering or could not be reached."""


class Dest(NamedTuple):
    kind: str  # "unix" or "tcp"
    path: str  # unix
    host: str  # tcp
    port: int  # tcp

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"tcp:[{self.host}]:{self.port}" if ":" in self.host else f"tcp:{self.host}:{self.port}"


def parse(text: str, listening: bool = False) -> Dest:
    """``unix:PATH`` or ``tcp:HOST:PORT`` (``tcp:[V6]:PORT``; a listener
    may give ``tcp:PORT``, which is 127.0.0.1). UsageProblem otherwise."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("unix", "tcp") or not rest:
        raise UsageProblem(f"migration address {text!r}: give unix:PATH or tcp:HOST:PORT")
    if kind == "unix":
        path = os.path.abspath(rest)
        check_path(path, "migration socket")
        return Dest("unix", path, "", 0)
    if rest.startswith("["):
        host, close, tail = rest[1:].partition("]")
        if not close or not tail.startswith(":"):
            raise UsageProblem(f"migration address {text!r}: give tcp:[V6ADDR]:PORT")
        port_text = tail[1:]
    elif ":" in rest:
        host, _, port_text = rest.rpartition(":")
    elif listening:
        host, port_text = DEFAULT_TCP_HOST, rest
    else:
        raise UsageProblem(f"migration address {text!r}: give tcp:HOST:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageProblem(f"migration address {text!r}: port {port_text!r} is not 1..65535")
    return Dest("tcp", "", host or DEFAULT_TCP_HOST, int(port_text))


class Conn:
    """One stream connection with per-operation timeouts."""

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock = sock
        self.timeout = timeout
        self.sent = 0
        self.received = 0

    def send(self, data) -> None:
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
        except socket.timeout:
            raise PeerError(f"the peer stopped reading for {self.timeout:.0f} s") from None
        except OSError as e:
            raise PeerError(f"the connection broke ({e.strerror or e})") from None
        self.sent += len(data)

    def send_parts(self, parts: Sequence[Union[bytes, bytearray, memoryview]]) -> None:
        """Send ``parts`` one after the other without joining them (one
        sendmsg while the socket takes it all)."""
        total = sum(len(p) for p in parts)
        try:
            self.sock.settimeout(self.timeout)
            done = self.sock.sendmsg(parts)
            if done < total:  # the socket took part of it: the rest in order
                for p in parts:
                    if done >= len(p):
                        done -= len(p)
                        continue
                    self.sock.sendall(memoryview(p)[done:])
                    done = 0
        except socket.timeout:
            raise PeerError(f"the peer stopped reading for {self.timeout:.0f} s") from None
        except OSError as e:
            raise PeerError(f"the connection broke ({e.strerror or e})") from None
        self.sent += total

    def readable(self) -> bool:
        """Whether the peer has sent something (or closed) not read yet: a
        receive would not wait."""
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True  # the receive says what is wrong

    def recv_exact(self, n: int, timeout: Optional[float] = None) -> bytes:
        """Exactly ``n`` bytes (a bytearray: a page frame is not copied again)."""
        buf = bytearray(n)
        self.recv_into(memoryview(buf), timeout)
        # The bytearray itself: stream.read_frame makes bytes of every frame but a page frame's
        return cast(bytes, buf)

    def recv_into(self, view: memoryview, timeout: Optional[float] = None) -> None:
        """Fill ``view`` (e.g. guest RAM) with exactly ``len(view)`` received bytes."""
        n = len(view)
        got = 0
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"the peer sent nothing for {self.timeout if timeout is None else timeout:.0f} s")
            try:
                self.sock.settimeout(left)
                k = self.sock.recv_into(view[got:], n - got)
            except socket.timeout:
                continue
            except OSError as e:
                raise PeerError(f"the connection broke ({e.strerror or e})") from None
            if k == 0:
                raise PeerError("the peer closed the connection")
            got += k
        self.received += n

    def drain(self, seconds: float) -> None:
        """Stop sending and discard what the peer still sends, until it
        closes or ``seconds`` pass."""
        deadline = time.monotonic() + seconds
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.sock.settimeout(left)
                if not self.sock.recv(1 << 16):
                    return
        except OSError:
            return

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def connect(dest: Dest, timeout: float) -> Conn:
    """A connection to a destination listening on ``dest``."""
    try:
        if dest.kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.settimeout(timeout)
                s.connect(dest.path)
            except BaseException:
                s.close()
                raise
        else:
            s = socket.create_connection((dest.host, dest.port), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except FileNotFoundError:
        raise PeerError(f"nothing listens on {dest} (start pyvmm restore --incoming {dest} there first)") from None
    except ConnectionRefusedError:
        raise PeerError(f"{dest} refused the connection (is pyvmm restore --incoming running there?)") from None
    except socket.timeout:
        raise PeerError(f"{dest} did not answer within {timeout:.0f} s") from None
    except OSError as e:
        raise PeerError(f"cannot connect to {dest}: {e.strerror or e}") from None
    return Conn(s, timeout)


class Listener:
    """Listens on ``dest`` for the one source; :meth:`accept` returns its
    connection and closes the listener (a unix socket's file is removed)."""

    def __init__(self, dest: Dest):
        self.dest = dest
        self.sock: Optional[socket.socket] = None
        if dest.kind == "unix":
            self.sock = listen_private(dest.path, "--incoming", 1)
        else:
            family = socket.AF_INET6 if ":" in dest.host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((dest.host, dest.port))
                s.listen(1)
            except OSError as e:
                s.close()
                raise UsageProblem(f"--incoming {dest}: {e.strerror or e}") from None
            self.sock = s

    def address(self) -> Tuple:
        return self.sock.getsockname() if self.sock is not None else ()

    def accept(self, timeout: Optional[float], io_timeout: float) -> Conn:
        if self.sock is None:
            raise PeerError("the listener is closed")
        try:
            self.sock.settimeout(timeout)
            conn, _ = self.sock.accept()
        except socket.timeout:
            raise PeerError(f"no migration source connected to {self.dest} within {timeout:.0f} s") from None
        finally:
            self.close()
        if self.dest.kind == "tcp":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Conn(conn, io_timeout)

    def close(self) -> None:
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        if self.dest.kind == "unix":
            try:
                os.unlink(self.dest.path)
            except FileNotFoundError:
                pass

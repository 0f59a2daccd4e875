"""The front-end side of the vhost-user protocol (QEMU's
docs/interop/vhost-user.rst, "Vhost-user Protocol"): a unix stream socket to
a back-end daemon (virtiofsd) that serves the virtio rings itself, reading
guest RAM through file descriptors this process sends.

Every message is a 12-byte header (request u32, flags u32, payload size u32;
little endian, flags carry version 1 in bits 0-1, REPLY in bit 2 and
NEED_REPLY in bit 3) and its payload; file descriptors ride along as
SCM_RIGHTS ancillary data. Methods carry the names the kernel vhost fds use
(pyvmm.vhost.base.VhostFd), so one virtio backend drives either.
"""
from __future__ import annotations

import array
import socket
import struct
from typing import Iterable, Optional, Sequence, Tuple

from ..errors import PyvmmError

# Requests (front-end -> back-end)
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18

VERSION = 0x1
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30  # a virtio feature bit the back-end offers
PROTOCOL_F_MQ = 1 << 0
PROTOCOL_F_REPLY_ACK = 1 << 3
# What this front-end uses of the protocol features: REPLY_ACK (every
# state-changing request is confirmed, so a refusal is seen where it happens).
SUPPORTED_PROTOCOL_FEATURES = PROTOCOL_F_REPLY_ACK
VRING_NOFD = 1 << 8  # SET_VRING_KICK/CALL payload: no fd attached
MAX_REGIONS = 8  # without CONFIGURE_MEM_SLOTS
HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEM_HEADER = struct.Struct("<II")
MEM_REGION = struct.Struct("<QQQQ")  # guest address, size, user address, mmap offset
MAX_PAYLOAD = 4096
TIMEOUT = 10.0  # seconds a back-end may take to answer


class VhostUserError(PyvmmError):
    """The back-end broke the protocol, refused a request or went away."""


def message(request: int, payload: bytes = b"", need_reply: bool = False) -> bytes:
    flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
    return HEADER.pack(request, flags, len(payload)) + payload


def mem_table_payload(regions: Sequence[Tuple[int, int, int, int]]) -> bytes:
    """regions: (guest address, size, user address, mmap offset)."""
    if not 1 <= len(regions) <= MAX_REGIONS:
        raise ValueError(f"{len(regions)} memory regions: vhost-user takes 1 to {MAX_REGIONS}")
    return MEM_HEADER.pack(len(regions), 0) + b"".join(MEM_REGION.pack(*r) for r in regions)


class VhostUser:
    """One connection to a vhost-user back-end. ``what`` names it in errors."""

    def __init__(self, sock: socket.socket, what: str):
        self.sock: Optional[socket.socket] = sock
        self.what = what
        self.protocol_features = 0
        self.features = 0  # the back-end's virtio features (GET_FEATURES)

    @classmethod
    def connect(cls, path: str, what: str) -> "VhostUser":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
        except OSError as e:
            s.close()
            raise VhostUserError(f"{what}: cannot connect to {path}: {e.strerror}") from None
        return cls.over(s, what)

    @classmethod
    def over(cls, s: socket.socket, what: str) -> "VhostUser":
        """On a socket already connected to the back-end."""
        s.settimeout(TIMEOUT)
        return cls(s, what)

    @property
    def protocol_negotiated(self) -> bool:
        """VHOST_USER_F_PROTOCOL_FEATURES is on: rings start disabled (SET_VRING_ENABLE)."""
        return bool(self.features & VHOST_USER_F_PROTOCOL_FEATURES)

    @property
    def fd(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    # -- framing ---------------------------------------------------------------
    def _open(self) -> socket.socket:
        if self.sock is None:
            raise VhostUserError(f"{self.what}: the connection to the back-end is closed")
        return self.sock

    def _send(self, data: bytes, fds: Iterable[int] = ()) -> None:
        fds = list(fds)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        sock = self._open()
        try:
            sent = sock.sendmsg([data], anc)
            if sent < len(data):
                sock.sendall(data[sent:])
        except OSError as e:
            raise VhostUserError(f"{self.what}: the back-end went away ({e.strerror})") from None

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        sock = self._open()
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except OSError as e:
                raise VhostUserError(f"{self.what}: the back-end went away ({e.strerror})") from None
            if not chunk:
                raise VhostUserError(f"{self.what}: the back-end closed the connection")
            buf += chunk
        return bytes(buf)

    def _reply(self, request: int) -> bytes:
        req, flags, size = HEADER.unpack(self._recv_exact(HEADER.size))
        if req != request or not flags & FLAG_REPLY or flags & 3 != VERSION:
            raise VhostUserError(f"{self.what}: expected the reply to request {request}, "
                                 f"got request {req} flags {flags:#x}")
        if size > MAX_PAYLOAD:
            raise VhostUserError(f"{self.what}: reply of {size} bytes to request {request}")
        return self._recv_exact(size)

    def _get_u64(self, request: int) -> int:
        self._send(message(request))
        payload = self._reply(request)
        if len(payload) != U64.size:
            raise VhostUserError(f"{self.what}: reply to request {request} is {len(payload)} bytes, not 8")
        return U64.unpack(payload)[0]

    def _set(self, request: int, payload: bytes = b"", fds: Iterable[int] = ()) -> None:
        """A request without a reply, acknowledged when REPLY_ACK is negotiated."""
        ack = bool(self.protocol_features & PROTOCOL_F_REPLY_ACK)
        self._send(message(request, payload, ack), fds)
        if ack:
            payload = self._reply(request)
            if len(payload) != U64.size:
                raise VhostUserError(f"{self.what}: acknowledgement of request {request} is {len(payload)} bytes")
            status = U64.unpack(payload)[0]
            if status:
                raise VhostUserError(f"{self.what}: the back-end refused request {request} (status {status})")

    # -- set-up (once, after connecting) ----------------------------------------
    def handshake(self) -> int:
        """GET_FEATURES, protocol features when offered, SET_OWNER; returns
        the back-end's virtio features."""
        self.features = self._get_u64(GET_FEATURES)
        if self.features & VHOST_USER_F_PROTOCOL_FEATURES:
            offered = self._get_u64(GET_PROTOCOL_FEATURES)
            self.protocol_features = offered & SUPPORTED_PROTOCOL_FEATURES
            self._send(message(SET_PROTOCOL_FEATURES, U64.pack(self.protocol_features)))
        self._set(SET_OWNER)
        return self.features

    # -- the VhostFd surface ----------------------------------------------------------
    def get_features(self) -> int:
        """The back-end's virtio features, without the protocol-features bit."""
        return self.features & ~VHOST_USER_F_PROTOCOL_FEATURES

    def set_features(self, features: int) -> None:
        if self.features & VHOST_USER_F_PROTOCOL_FEATURES:
            features |= VHOST_USER_F_PROTOCOL_FEATURES
        self._set(SET_FEATURES, U64.pack(features))

    def set_mem_table(self, regions: Iterable[Tuple[int, int, int, int]]) -> None:
        """regions: (guest address, size, address in this process, fd); the
        fd is what the back-end maps (shared guest RAM), from offset 0."""
        regions = list(regions)
        if any(fd < 0 for *_, fd in regions):
            raise VhostUserError(f"{self.what}: guest RAM is not shareable (it must be shared memory with an fd)")
        payload = mem_table_payload([(gpa, size, hva, 0) for gpa, size, hva, _ in regions])
        self._set(SET_MEM_TABLE, payload, [fd for *_, fd in regions])

    def set_vring_num(self, index: int, num: int) -> None:
        self._set(SET_VRING_NUM, VRING_STATE.pack(index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        self._set(SET_VRING_BASE, VRING_STATE.pack(index, base))

    def set_vring_addr(self, index: int, desc: int, avail: int, used: int, flags: int = 0) -> None:
        self._set(SET_VRING_ADDR, VRING_ADDR.pack(index, flags, desc, used, avail, 0))

    def set_vring_kick(self, index: int, fd: Optional[int]) -> None:
        self._set(SET_VRING_KICK, U64.pack(index | (VRING_NOFD if fd is None else 0)), [] if fd is None else [fd])

    def set_vring_call(self, index: int, fd: Optional[int]) -> None:
        self._set(SET_VRING_CALL, U64.pack(index | (VRING_NOFD if fd is None else 0)), [] if fd is None else [fd])

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self._set(SET_VRING_ENABLE, VRING_STATE.pack(index, int(enable)))

    def get_vring_base(self, index: int) -> int:
        """Stops the ring; answers its next available index."""
        self._send(message(GET_VRING_BASE, VRING_STATE.pack(index, 0)))
        payload = self._reply(GET_VRING_BASE)
        if len(payload) != VRING_STATE.size:
            raise VhostUserError(f"{self.what}: GET_VRING_BASE reply is {len(payload)} bytes, not 8")
        got, num = VRING_STATE.unpack(payload)
        if got != index:
            raise VhostUserError(f"{self.what}: GET_VRING_BASE answered for ring {got}, not {index}")
        return num

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

"""Fakes for vhost data planes (pure-logic tests only; the real ones are
exercised against the kernel and virtiofsd in the test machine):

- FakePlane records the VhostFd calls a virtio backend makes.
- DgramTap stands in for a tap: a datagram socketpair, one frame per datagram.
- FakeVhostUserBackend is the back-end end of a socketpair that answers the
  vhost-user requests as the spec (docs/interop/vhost-user.rst) says a
  back-end must, and records every message with the fds that came with it.
"""
import array
import os
import socket
import struct
import threading

HEADER = struct.Struct("<III")


class FakePlane:
    def __init__(self, features):
        self.features = features
        self.calls = []
        self.fd = -1
        self.protocol_negotiated = False

    def __getattr__(self, name):
        if name.startswith(("set_", "net_set_", "get_vring_base")):
            def record(*args):
                self.calls.append((name,) + args)
                return 0
            return record
        raise AttributeError(name)

    def get_features(self):
        return self.features

    def close(self):
        self.calls.append(("close",))


class FakeVhostUserBackend(threading.Thread):
    """Answers on ``sock``. replies: request -> payload for requests with a
    reply; every request with NEED_REPLY gets ``ack_status``."""

    GET_FEATURES, GET_PROTOCOL_FEATURES, GET_VRING_BASE = 1, 15, 11

    def __init__(self, sock, features, protocol_features, ack_status=0):
        super().__init__(daemon=True)
        self.sock = sock
        self.features = features
        self.protocol_features = protocol_features
        self.ack_status = ack_status
        self.messages = []  # (request, flags, payload, fds)
        self.vring_bases = {}

    def _recv(self, n):
        data, fds = b"", []
        while len(data) < n:
            msg, anc, _, _ = self.sock.recvmsg(n - len(data), socket.CMSG_SPACE(8 * 4))
            if not msg:
                return None, fds
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(cdata[:len(cdata) - len(cdata) % 4])
                    fds.extend(a)
            data += msg
        return data, fds

    def run(self):
        while True:
            hdr, fds = self._recv(HEADER.size)
            if hdr is None:
                return
            req, flags, size = HEADER.unpack(hdr)
            payload, more = self._recv(size) if size else (b"", [])
            fds += more
            self.messages.append((req, flags, payload, fds))
            reply = None
            if req == self.GET_FEATURES:
                reply = struct.pack("<Q", self.features)
            elif req == self.GET_PROTOCOL_FEATURES:
                reply = struct.pack("<Q", self.protocol_features)
            elif req == self.GET_VRING_BASE:
                index = struct.unpack("<I", payload[:4])[0]
                reply = struct.pack("<II", index, self.vring_bases.get(index, 0))
            elif flags & (1 << 3):
                reply = struct.pack("<Q", self.ack_status)
            if reply is not None:
                self.sock.sendall(HEADER.pack(req, 0x1 | (1 << 2), len(reply)) + reply)
            for fd in fds:
                os.close(fd)


class DgramTap:
    """A datagram socketpair standing in for a tap (one frame per datagram)."""

    name = "pvpy0"

    def __init__(self):
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()

    def close(self):
        self.sock.close()
        self.peer.close()

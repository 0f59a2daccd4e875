"""A rtnetlink socket that hears about network interfaces going away
(include/uapi/linux/rtnetlink.h, Documentation/userspace-api/netlink/intro.rst).

Bound to the RTMGRP_LINK multicast group of NETLINK_ROUTE, it receives an
RTM_DELLINK message whenever an interface of this network namespace is
deleted (``ip link del``, a tap's last fd closing). :meth:`LinkWatch.gone`
reads what is queued and answers the watched interfaces that were deleted.
Each message is a struct nlmsghdr (len u32, type u16, flags u16, seq u32,
pid u32) followed, for link messages, by a struct ifinfomsg (family u8,
pad u8, type u16, index s32, flags u32, change u32); messages are 4-byte
aligned (NLMSG_ALIGN).
"""
from __future__ import annotations

import errno
import socket
import struct
from typing import Dict, List

NETLINK_ROUTE = 0
RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
NLMSG_HDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BBHiII")
RECV_BYTES = 1 << 16


def deleted_indices(data: bytes) -> List[int]:
    """The interface indices of the RTM_DELLINK messages in ``data`` (one
    datagram of netlink messages); truncated or malformed messages end the walk."""
    out = []
    off = 0
    while off + NLMSG_HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, off)
        if length < NLMSG_HDR.size or off + length > len(data):
            break
        if kind == RTM_DELLINK and length >= NLMSG_HDR.size + IFINFOMSG.size:
            out.append(IFINFOMSG.unpack_from(data, off + NLMSG_HDR.size)[3])
        off += (length + 3) & ~3
    return out


class LinkWatch:
    """Watches interfaces by name (their index is taken when added)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                                  NETLINK_ROUTE)
        try:
            self.sock.bind((0, RTMGRP_LINK))
        except OSError:
            self.sock.close()
            raise
        self.watched: Dict[int, str] = {}  # ifindex -> name

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def add(self, name: str) -> bool:
        """Watch ``name``; False when it does not exist (any more)."""
        try:
            self.watched[socket.if_nametoindex(name)] = name
        except OSError:
            return False
        return True

    def gone(self) -> List[str]:
        """The watched interfaces deleted since the last call (reads every
        queued message; an overrun receive queue (ENOBUFS) means messages
        were lost, so every watched name is looked up again)."""
        out: List[str] = []
        while True:
            try:
                data = self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                out += [n for i, n in self.watched.items() if not _exists(i, n) and n not in out]
                continue
            out += [self.watched[i] for i in deleted_indices(data) if i in self.watched and self.watched[i] not in out]
        for n in out:
            for i in [i for i, m in self.watched.items() if m == n]:
                del self.watched[i]
        return out

    def close(self) -> None:
        self.sock.close()


def _exists(index: int, name: str) -> bool:
    try:
        return socket.if_nametoindex(name) == index
    except OSError:
        return False

"""The destination's taps during an incoming migration on the same host.

The source's tap (pyvmm makes its taps multi-queue, pyvmm/net/tap.py) is
still attached to the source while the destination builds its machine:
the destination attaches a second queue to it. So that the source's guest
keeps getting its packets during pre-copy (the tap spreads flows over its
enabled queues, and nothing reads the destination's yet), that queue is
disabled at once (TUNSETQUEUE IFF_DETACH_QUEUE) and enabled again only when
the whole state has arrived, just before READY: from then on the source's
guest is paused and its vhost plane stopped, and what reaches its queue
until it exits is lost, as on a cable pulled and plugged in elsewhere.
A destination that fails closes its queue; the source's carries on.
Only a source on this host (:func:`same_host`) has its taps shared.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import List


def same_host(sock: socket.socket) -> bool:
    """Whether the source connected from this host (a unix socket, or TCP
    from a loopback address): only then may its taps be shared. A source
    elsewhere leaves no tap here, so a tap of that name in use belongs to
    another VM and is refused."""
    if sock.family == socket.AF_UNIX:
        return True
    try:
        return ipaddress.ip_address(sock.getpeername()[0]).is_loopback
    except (OSError, ValueError):
        return False


def standby(m) -> List:
    """Disable the queue of every multi-queue tap machine ``m`` attached to
    an interface that existed before (on this host: possibly the source's)."""
    done: List = []
    for t in m.transports:
        tap = getattr(t.backend, "tap", None)
        if tap is not None and tap.multi_queue and not tap.created:
            tap.tunsetqueue(False)
            done.append(tap)
    return done


def take_over(taps: List) -> None:
    """Enable the queues :func:`standby` disabled."""
    for tap in taps:
        tap.tunsetqueue(True)

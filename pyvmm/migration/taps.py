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
"""
from __future__ import annotations

from typing import List


def standby(m) -> List:
    """Disable the queue of every multi-queue tap machine ``m`` attached to
    an interface that existed before (on this host: possibly the source's)."""
    done: List = []
    for t in m.virtio:
        tap = getattr(t.backend, "tap", None)
        if tap is not None and tap.multi_queue and not tap.created:
            tap.tunsetqueue(False)
            done.append(tap)
    return done


def take_over(taps: List) -> None:
    """Enable the queues :func:`standby` disabled."""
    for tap in taps:
        tap.tunsetqueue(True)

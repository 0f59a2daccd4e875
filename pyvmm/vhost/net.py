"""The /dev/vhost-net fd: the kernel moves packets between the virtio rings
and a tap (VHOST_NET_SET_BACKEND)."""
from __future__ import annotations

from .base import VhostFd

PATH = "/dev/vhost-net"


class VhostNet(VhostFd):
    target = "vhost-net"
    QUEUES = 2  # receive, transmit
    PATH = PATH
    NODE_HELP = ("virtio-net", "vhost_net", ", or use vhost=off")

    def net_set_backend(self, index: int, fd: int) -> None:
        """Serve ring ``index`` with the tap ``fd``; -1 stops the ring."""
        self._file("VHOST_NET_SET_BACKEND", index, fd)

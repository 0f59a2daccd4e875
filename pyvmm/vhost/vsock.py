"""The /dev/vhost-vsock fd: the kernel's vsock transport for one guest CID,
serving the receive and transmit rings (the event ring stays with the VMM)."""
from __future__ import annotations

from .._ffi import ffi
from .base import VhostFd

PATH = "/dev/vhost-vsock"


class VhostVsock(VhostFd):
    target = "vhost-vsock"
    QUEUES = 2  # receive, transmit
    PATH = PATH
    NODE_HELP = ("virtio-vsock", "vhost_vsock", "")

    def set_guest_cid(self, cid: int) -> None:
        """EADDRINUSE: another VM on this host has the CID."""
        v = ffi.new("uint64_t *", cid)
        self.ioctl("VHOST_VSOCK_SET_GUEST_CID", v)

    def set_running(self, running: bool) -> None:
        v = ffi.new("int *", 1 if running else 0)
        self.ioctl("VHOST_VSOCK_SET_RUNNING", v)

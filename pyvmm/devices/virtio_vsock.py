"""virtio-vsock (virtio 1.2, section 5.10) through vhost-vsock: the guest's
CID is the config space; the receive (0) and transmit (1) queues are the
kernel's, the event queue (2) stays here and is never used (transport
events only matter across migration)."""
from __future__ import annotations

import errno
import struct
from typing import Dict

from ..errors import UsageProblem
from .state import StateReader
from .vhost_backend import RING_FEATURES, VhostBackend

DEVICE_ID = 19
RX, TX, EVENT = 0, 1, 2
# CIDs 0 (hypervisor), 1 (local), 2 (host) and U32_MAX (any) are reserved
CID_MIN, CID_MAX = 3, 0xFFFFFFFE


def check_cid(cid: int) -> int:
    if not CID_MIN <= cid <= CID_MAX:
        raise UsageProblem(f"--vsock cid={cid}: a guest CID is {CID_MIN}..{CID_MAX} (0-2 and 4294967295 are reserved)")
    return cid


class VirtioVsock(VhostBackend):
    device_id = DEVICE_ID
    num_queues = 3
    queue_max = 256
    served_queues = (RX, TX)

    def __init__(self, plane, cid: int):
        check_cid(cid)
        super().__init__(plane, plane.get_features())
        try:
            plane.set_guest_cid(cid)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageProblem(f"--vsock cid={cid}: the CID is in use by another VM on this host",
                                   "choose another cid") from None
            raise
        self.cid = cid
        self.features = self.plane_features & RING_FEATURES

    @classmethod
    def open(cls, cid: int) -> "VirtioVsock":
        from ..vhost.vsock import VhostVsock

        plane = VhostVsock.open()
        try:
            return cls(plane, cid)
        except BaseException:
            plane.close()
            raise

    def config_read(self, offset: int, length: int) -> bytes:
        return struct.pack("<Q", self.cid)[offset:offset + length].ljust(length, b"\0")

    def start(self, transport) -> None:
        self.plane.set_running(True)

    def stop(self) -> None:
        self.plane.set_running(False)

    def save_state(self) -> Dict:
        return {"cid": self.cid}

    def load_state(self, state: Dict) -> None:
        r = StateReader("virtio-vsock", state, ("cid",))
        cid = r.int("cid", 0, (1 << 64) - 1)
        if cid != self.cid:
            raise r.fail(f"had CID {cid}, this machine gives {self.cid}")

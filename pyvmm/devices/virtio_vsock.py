"""virtio-vsock (virtio 1.2, section 5.10) through vhost-vsock: the guest's
CID is the config space; the receive (0) and transmit (1) queues are the
kernel's, the event queue (2) stays here.

The event queue carries one event (5.10.6, "Device Events"): a struct
virtio_vsock_event (le32 id) with id VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (0),
written into a buffer the driver made available there. After a snapshot
restore the guest's connections no longer exist on the host (they lived in
the old process's vhost-vsock), so the device posts that event: Linux's
driver then resets every connected socket (their users see ECONNRESET and
can connect again) and reads the CID from the config space again. With no
event buffer available the event waits for the driver's next notify of
the event queue."""
from __future__ import annotations

import errno
import struct
from typing import Dict

from ..errors import UsageProblem
from .state import StateReader
from .vhost_backend import RING_FEATURES, VhostBackend
from .virtio_mmio import VirtioMmio
from .virtqueue import write_segments

DEVICE_ID = 19
RX, TX, EVENT = 0, 1, 2
EVENT_TRANSPORT_RESET = 0
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
    unlogged = ("vhost-vsock does not put the packets it writes into guest memory in its dirty log "
                "(only its used rings; drivers/vhost/vsock.c)")

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
        self.reset_pending = False  # a transport reset event waits for an event buffer
        self.events_posted = 0

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

    def restored(self, transport: VirtioMmio) -> None:
        """The guest's connections died with the process that saved it: tell
        its driver (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET)."""
        self.reset_pending = True
        self._post_events(transport)

    def queue_notify(self, transport: VirtioMmio, index: int) -> None:
        if index == EVENT:
            self._post_events(transport)  # new event buffers
        else:
            super().queue_notify(transport, index)

    def _post_events(self, transport: VirtioMmio) -> None:
        q = transport.queues[EVENT]
        if not self.reset_pending or not transport.driver_ok or not q.ready:
            return
        event = struct.pack("<I", EVENT_TRANSPORT_RESET)
        used = False
        while self.reset_pending:
            chain = q.pop()
            if chain is None:
                break  # no buffer (left): posted on the driver's next notify
            used = True
            if chain.writable_len < len(event):
                q.push(chain.head, 0)  # too small for the event: given back empty
                continue
            q.push(chain.head, write_segments(transport.mem, chain.writable, event))
            self.reset_pending = False
            self.events_posted += 1
        if used:
            transport.signal_used(q)

    def stop(self) -> None:
        self.plane.set_running(False)

    def save_state(self) -> Dict:
        return {"cid": self.cid}

    def load_state(self, state: Dict) -> None:
        r = StateReader("virtio-vsock", state, ("cid",))
        cid = r.int("cid", 0, (1 << 64) - 1)
        if cid != self.cid:
            raise r.fail(f"had CID {cid}, this machine gives {self.cid}")

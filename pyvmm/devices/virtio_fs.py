"""virtio-fs (virtio 1.2, section 5.11) served by a vhost-user daemon
(virtiofsd): a high-priority queue (0) and one request queue (1), both the
daemon's; the config space is the mount tag and the number of request
queues. The daemon reads and writes guest RAM itself, so the machine's RAM
must be shared memory (a shmem file, pyvmm/memory.py)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Dict, Optional

from .state import StateReader
from .vhost_backend import RING_FEATURES, VhostBackend

if TYPE_CHECKING:
    from ..vhost.virtiofsd import Virtiofsd

DEVICE_ID = 26
TAG_BYTES = 36
HIPRIO, REQUEST = 0, 1


class VirtioFs(VhostBackend):
    device_id = DEVICE_ID
    num_queues = 2
    queue_max = 1024
    served_queues = (HIPRIO, REQUEST)
    snapshot_refusal = "virtio-fs state lives in its vhost-user daemon and cannot be saved"
    unlogged = "its vhost-user daemon (virtiofsd) writes guest memory outside any dirty log pyvmm reads"

    def __init__(self, plane, tag: str, daemon=None):
        super().__init__(plane, plane.get_features())
        self.tag = tag
        self.daemon = daemon  # a Virtiofsd pyvmm started (stopped with the device), or None
        self.features = self.plane_features & RING_FEATURES

    @classmethod
    def open(cls, tag: str, shared_dir: Optional[str] = None, socket_path: Optional[str] = None,
             daemon: Optional["Virtiofsd"] = None) -> "VirtioFs":
        """With ``shared_dir``: start virtiofsd for it (or use ``daemon``,
        already spawned for it); else connect to ``socket_path``. The device
        owns the daemon from here on, also when this fails."""
        from ..vhost.user import VhostUser
        from ..vhost.virtiofsd import Virtiofsd

        if shared_dir is None and socket_path is None:
            raise ValueError("virtio-fs needs a shared directory or a daemon's socket")
        try:
            if daemon is None and shared_dir is not None:
                daemon = Virtiofsd(tag, shared_dir).spawn()
            if daemon is not None:
                daemon.wait_ready()
        except BaseException:
            if daemon is not None:
                daemon.stop()
            raise
        try:
            if daemon is not None and daemon.connection is not None:
                sock, daemon.connection = daemon.connection, None  # the plane owns it now
                plane = VhostUser.over(sock, f"virtio-fs {tag}")
            else:
                plane = VhostUser.connect(str(socket_path), f"virtio-fs {tag}")
            try:
                plane.handshake()
                return cls(plane, tag, daemon)
            except BaseException:
                plane.close()
                raise
        except BaseException:
            if daemon is not None:
                daemon.stop()
            raise

    def config_read(self, offset: int, length: int) -> bytes:
        cfg = self.tag.encode().ljust(TAG_BYTES, b"\0") + struct.pack("<I", 1)
        return cfg[offset:offset + length].ljust(length, b"\0")

    def start(self, transport) -> None:
        # With VHOST_USER_F_PROTOCOL_FEATURES negotiated rings start disabled.
        if self.plane.protocol_negotiated:
            for i in self.started:
                self.plane.set_vring_enable(i, True)

    def stop(self) -> None:
        for i in self.started:
            self.plane.get_vring_base(i)  # stops the ring

    def close(self) -> None:
        try:
            super().close()
        except Exception:
            self.plane.close()  # the daemon may be gone already
        if self.daemon is not None:
            self.daemon.stop()

    def save_state(self) -> Dict:
        return {"tag": self.tag}

    def load_state(self, state: Dict) -> None:
        raise StateReader("virtio-fs", state, ("tag",)).fail("virtio-fs cannot be restored")

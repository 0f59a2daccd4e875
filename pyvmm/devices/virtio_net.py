"""virtio-net (virtio 1.2, section 5.1) on a tap, its packets moved by
vhost-net in the kernel: one receive and one transmit queue, no control
queue. The config space is the MAC address and the link status (always up).

Offloads: the driver may send partially checksummed and segmentation
offloaded frames (CSUM, HOST_TSO4/6, HOST_ECN: the tap takes them with their
virtio-net header) and receive them (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN:
the tap is told with TUNSETOFFLOAD what it may hand over); mergeable receive
buffers and the ring features come from vhost-net when it offers them.
"""
from __future__ import annotations

import os
import re
import struct
from typing import Dict, Optional

from .state import StateReader
from .vhost_backend import RING_FEATURES, VhostBackend

DEVICE_ID = 1
RX, TX = 0, 1
F_CSUM, F_GUEST_CSUM, F_MAC = 1 << 0, 1 << 1, 1 << 5
F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN = 1 << 7, 1 << 8, 1 << 9
F_HOST_TSO4, F_HOST_TSO6, F_HOST_ECN = 1 << 11, 1 << 12, 1 << 13
F_MRG_RXBUF, F_STATUS = 1 << 15, 1 << 16
S_LINK_UP = 1
OFFLOADS = (F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN
            | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN)
# TUNSETOFFLOAD bits (include/uapi/linux/if_tun.h) for the guest's receive offloads
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 1, 2, 4, 8

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def parse_mac(text: str) -> bytes:
    """'52:54:00:12:34:56' -> 6 bytes; a unicast address is required."""
    if not _MAC.match(text):
        raise ValueError(f"mac={text}: expected six hex bytes like 52:54:00:12:34:56")
    mac = bytes(int(x, 16) for x in text.split(":"))
    if mac[0] & 1:
        raise ValueError(f"mac={text}: a multicast address (lowest bit of the first byte set)")
    return mac


def random_mac() -> bytes:
    """A locally administered unicast address (first byte x2, x6, xA or xE)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return bytes(b)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{x:02x}" for x in mac)


def tun_offloads(features: int) -> int:
    """The TUNSETOFFLOAD flags for negotiated ``features``."""
    flags = 0
    if features & F_GUEST_CSUM:
        flags |= TUN_F_CSUM
        if features & F_GUEST_TSO4:
            flags |= TUN_F_TSO4
        if features & F_GUEST_TSO6:
            flags |= TUN_F_TSO6
        if features & F_GUEST_ECN and flags & (TUN_F_TSO4 | TUN_F_TSO6):
            flags |= TUN_F_TSO_ECN
    return flags


def config_bytes(mac: bytes, status: int = S_LINK_UP) -> bytes:
    # struct virtio_net_config: mac[6], status le16, max_virtqueue_pairs le16, mtu le16
    return mac + struct.pack("<HHH", status, 1, 0)


class VirtioNet(VhostBackend):
    """virtio-net whose queues vhost-net serves (``plane``: a VhostNet)."""

    device_id = DEVICE_ID
    num_queues = 2
    queue_max = 256
    served_queues = (RX, TX)

    def __init__(self, tap, plane, mac: Optional[bytes] = None):
        super().__init__(plane, plane.get_features())
        self.tap = tap
        self.mac = mac or random_mac()
        self.features = (F_MAC | F_STATUS | OFFLOADS | (self.plane_features & (F_MRG_RXBUF | RING_FEATURES)))

    @classmethod
    def open(cls, tap_name: str, mac: Optional[str] = None) -> "VirtioNet":
        """On tap ``tap_name`` (created if missing) with vhost-net."""
        from ..net.tap import Tap
        from ..vhost.net import VhostNet

        tap = Tap.open(tap_name)
        try:
            plane = VhostNet.open()
        except BaseException:
            tap.close()
            raise
        try:
            return cls(tap, plane, parse_mac(mac) if mac else None)
        except BaseException:
            plane.close()
            tap.close()
            raise

    def config_read(self, offset: int, length: int) -> bytes:
        return config_bytes(self.mac)[offset:offset + length].ljust(length, b"\0")

    def plane_feature_bits(self, negotiated: int) -> int:
        # vhost-net refuses device bits it does not know (the offloads are the
        # tap's business): only the ring features and MRG_RXBUF go to it.
        return negotiated & self.plane_features & (F_MRG_RXBUF | RING_FEATURES)

    def start(self, transport) -> None:
        self.tap.tunsetoffload(tun_offloads(transport.driver_features))
        for i in self.served_queues:
            self.plane.net_set_backend(i, self.tap.fd)

    def stop(self) -> None:
        for i in self.served_queues:
            self.plane.net_set_backend(i, -1)

    def close(self) -> None:
        super().close()
        self.tap.close()

    # -- snapshot -------------------------------------------------------------
    def save_state(self) -> Dict:
        return {"tap": self.tap.name, "mac": format_mac(self.mac)}

    def load_state(self, state: Dict) -> None:
        r = StateReader("virtio-net", state, ("tap", "mac"))
        tap, mac = r.str("tap"), r.str("mac")
        if tap != self.tap.name:
            raise r.fail(f"was on tap {tap}, this machine uses {self.tap.name}")
        if mac != format_mac(self.mac):
            raise r.fail(f"had MAC {mac}, this machine gives {format_mac(self.mac)}")

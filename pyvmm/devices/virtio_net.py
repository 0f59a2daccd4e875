"""virtio-net (virtio 1.2, section 5.1) on a tap, its packets moved by
vhost-net in the kernel (or, with vhost=off, by pyvmm: VirtioNetPython):
one receive and one transmit queue, no control queue. The config space is the MAC address and the link status (always up).

Offloads: the driver may send partially checksummed and segmentation
offloaded frames (CSUM, HOST_TSO4/6, HOST_ECN: the tap takes them with their
virtio-net header) and receive them (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN:
the tap is told with TUNSETOFFLOAD what it may hand over); mergeable receive
buffers and the ring features come from vhost-net when it offers them.
"""
from __future__ import annotations

import errno
import os
import re
import struct
from typing import Dict, Optional

from .io_thread import IoThread
from .state import StateReader
from .vhost_backend import RING_FEATURES, VhostBackend
from .virtio_mmio import VIRTIO_F_VERSION_1, VirtioBackend
from .virtqueue import read_segments, write_segments

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


def save_tap_state(tap: str, mac: bytes) -> Dict:
    """What a virtio-net backend records: its tap's name and its MAC."""
    return {"tap": tap, "mac": format_mac(mac)}


def check_tap_state(state: Dict, tap: str, mac: bytes) -> None:
    """A saved :func:`save_tap_state` is this device's (same tap, same MAC)."""
    r = StateReader("virtio-net", state, ("tap", "mac"))
    saved_tap, saved_mac = r.str("tap"), r.str("mac")
    if saved_tap != tap:
        raise r.fail(f"was on tap {saved_tap}, this machine uses {tap}")
    if saved_mac != format_mac(mac):
        raise r.fail(f"had MAC {saved_mac}, this machine gives {format_mac(mac)}")


class VirtioNet(VhostBackend):
    """virtio-net whose queues vhost-net serves (``plane``: a VhostNet)."""

    device_id = DEVICE_ID
    num_queues = 2
    queue_max = 256
    served_queues = (RX, TX)
    unlogged = ""  # vhost-net logs the receive buffers it fills and both used rings

    def __init__(self, tap, plane, mac: Optional[bytes] = None):
        super().__init__(plane, plane.get_features())
        self.tap = tap
        self.mac = mac or random_mac()
        self.features = (F_MAC | F_STATUS | OFFLOADS | (self.plane_features & (F_MRG_RXBUF | RING_FEATURES)))

    @classmethod
    def open(cls, tap_name: str, mac: Optional[str] = None, shared: bool = False) -> "VirtioNet":
        """On tap ``tap_name`` (created if missing) with vhost-net; ``shared``:
        see :meth:`pyvmm.net.tap.Tap.open`."""
        from ..net.tap import Tap
        from ..vhost.net import VhostNet

        tap = Tap.open(tap_name, shared)
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
        return save_tap_state(self.tap.name, self.mac)

    def load_state(self, state: Dict) -> None:
        check_tap_state(state, self.tap.name, self.mac)


class VirtioNetPython(VirtioBackend):
    """virtio-net with its packets moved by pyvmm itself (``vhost=off``), for
    hosts without /dev/vhost-net: slower, one copy per packet in Python, no
    offloads. Transmit chains (virtio-net header + frame) are written to the
    tap as they are; frames read from the tap (with the tap's header) go
    into receive chains, num_buffers set to 1 (5.1.6.3.1). A frame that does
    not fit a receive chain, or that the tap refuses, is dropped, as a
    network card would. The I/O thread watches the tap while the guest has
    receive buffers (``io``: the machine's I/O thread; None in tests that
    drive the queues themselves). A tap whose interface was deleted fails
    every read (EBADFD): the tap is no longer watched (the machine hears of
    the deletion and stops the guest)."""

    device_id = DEVICE_ID
    num_queues = 2
    queue_max = 256
    MAX_FRAME = 65550 + 12

    def __init__(self, tap, mac: Optional[bytes] = None, io: Optional[IoThread] = None):
        self.tap = tap
        self.mac = mac or random_mac()
        self.features = F_MAC | F_STATUS | VIRTIO_F_VERSION_1
        self.io = io
        self.watching = False
        self.rx_packets = self.tx_packets = self.dropped = 0

    @classmethod
    def open(cls, tap_name: str, mac: Optional[str] = None, io: Optional[IoThread] = None,
             shared: bool = False) -> "VirtioNetPython":
        from ..net.tap import Tap

        tap = Tap.open(tap_name, shared)
        try:
            tap.tunsetoffload(0)
            return cls(tap, parse_mac(mac) if mac else None, io)
        except BaseException:
            tap.close()
            raise

    def config_read(self, offset: int, length: int) -> bytes:
        return config_bytes(self.mac)[offset:offset + length].ljust(length, b"\0")

    def activate(self, transport) -> None:
        if self.io is not None and not self.watching:
            self.io.watch(self.tap.fd, self._tap_readable)
            self.watching = True
        self._want_rx(True)

    def reset(self) -> None:
        self._want_rx(False)

    def _want_rx(self, on: bool) -> None:
        if self.io is not None and self.watching:
            self.io.enable(self.tap.fd, on)

    def queue_notify(self, transport, index: int) -> None:
        if index == TX:
            self._transmit(transport)
        elif index == RX:
            self._want_rx(True)  # new receive buffers: look at the tap again

    def _transmit(self, transport) -> None:
        def send(chain) -> int:
            frame = read_segments(transport.mem, chain.readable, 0, min(chain.readable_len, self.MAX_FRAME))
            try:
                os.write(self.tap.fd, frame)
                self.tx_packets += 1
            except OSError:  # the tap's queue is full or the interface is down: dropped
                self.dropped += 1
            return 0
        transport.serve(TX, send)

    def _tap_readable(self) -> None:
        t = self.transport
        if t is None:
            return
        with t.lock:
            t.run_guarded(self._receive, t)

    def _receive(self, transport) -> None:
        if not transport.driver_ok or not transport.queues[RX].ready:
            self._want_rx(False)
            return
        q = transport.queues[RX]
        done = False
        for _ in range(64):  # a batch, then back to the loop
            if q.pending() == 0:
                self._want_rx(False)  # until the driver adds buffers (a receive-queue notify)
                break
            try:
                frame = os.read(self.tap.fd, self.MAX_FRAME)
            except BlockingIOError:
                break
            except OSError as e:
                self.dropped += 1
                if e.errno in (errno.EBADFD, errno.EIO) and self.io is not None and self.watching:
                    self.io.forget(self.tap.fd)  # the interface is gone: its fd polls as an error for ever
                    self.io = None
                break
            chain = q.pop()
            if len(frame) < 12 or len(frame) > chain.writable_len:
                self.dropped += 1
                q.push(chain.head, 0)
            else:
                frame = frame[:10] + b"\x01\x00" + frame[12:]  # num_buffers = 1
                q.push(chain.head, write_segments(transport.mem, chain.writable, frame))
                self.rx_packets += 1
            done = True
        if done:
            transport.signal_used(q)

    def close(self) -> None:
        self.tap.close()

    def save_state(self) -> Dict:
        return save_tap_state(self.tap.name, self.mac)

    def load_state(self, state: Dict) -> None:
        check_tap_state(state, self.tap.name, self.mac)

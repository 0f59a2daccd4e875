"""virtio-console, one port, no multiport (virtio 1.2, section 5.3): queue 0
receives (host -> guest), queue 1 transmits (guest -> host). Linux names it hvc0."""
from __future__ import annotations

import struct
from typing import Callable, Dict, List

from .state import StateReader, b64
from .virtio_mmio import VIRTIO_F_VERSION_1, VirtioBackend
from .virtqueue import IO_CHUNK, event_idx_offer, iter_segments, write_segments

DEVICE_ID = 3
RX, TX = 0, 1
PENDING_MAX = 64 * 1024


class VirtioConsole(VirtioBackend):
    device_id = DEVICE_ID
    num_queues = 2
    queue_max = 256
    features = VIRTIO_F_VERSION_1

    def __init__(self, output: Callable[[bytes], None]):
        self.features = VIRTIO_F_VERSION_1 | event_idx_offer()
        self._output = output
        self._pending = bytearray()
        self.tx_bytes = 0

    def config_read(self, offset: int, length: int) -> bytes:
        # struct virtio_console_config: cols u16, rows u16, max_nr_ports u32, emerg_wr u32
        return struct.pack("<HHII", 80, 25, 1, 0)[offset:offset + length].ljust(length, b"\0")

    def config_write(self, offset: int, data: bytes) -> None:
        if offset == 8 and data:  # emerg_wr: one character out, no queue involved
            self._output(data[:1])

    def queue_notify(self, transport, index: int) -> None:
        if index == TX:
            self._transmit(transport)
        elif index == RX:
            self._fill()

    def _transmit(self, transport) -> None:
        """Send every available transmit chain to the output, then one
        used-buffer interrupt. Linux's hvc driver spins (interrupts off)
        until each chunk it queues is used, so a chain of one segment no
        larger than IO_CHUNK (the usual case) is copied out and given back at
        once, and written to the output only after that: the guest goes on
        while the host writes (never more than IO_CHUNK held here). Longer
        chains are streamed in pieces of at most IO_CHUNK bytes before they
        are given back, so a notify of many huge chains costs time (the
        output's own pace: back-pressure on the vCPU that notified), never
        host memory. The interrupt comes after the writes: with
        VIRTIO_RING_F_EVENT_IDX a driver that already took its buffers back
        (hvc's spin) has moved used_event past them by then and needs none."""
        q = transport.queues[TX]
        mem = transport.mem
        copied: List[bytes] = []  # from chains already given back, not yet written
        held = 0
        done = False
        try:
            while True:
                chain = q.pop()
                if chain is None:
                    break
                segs = chain.readable
                if len(segs) == 1 and segs[0][1] <= IO_CHUNK:
                    if held + segs[0][1] > IO_CHUNK:
                        self._write(copied)
                        held = 0
                    copied.append(mem.read(*segs[0]))
                    held += segs[0][1]
                else:
                    self._write(copied)
                    held = 0
                    for piece in iter_segments(mem, segs):
                        self._write([piece])
                q.push(chain.head, 0)
                done = True
        finally:
            self._write(copied)  # what was given back is written even when a later chain is refused
        if done:
            transport.signal_used(q)

    def _write(self, pieces: List[bytes]) -> None:
        """Write ``pieces`` to the output in one call, and forget them."""
        if pieces:
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            pieces.clear()
            self.tx_bytes += len(data)
            self._output(data)

    def _fill(self) -> None:
        t = self.transport
        if t is None or not t.driver_ok or not self._pending:
            return
        q = t.queues[RX]
        if not q.ready:
            return
        done = False
        while self._pending:
            chain = q.pop()
            if chain is None:
                break
            n = write_segments(t.mem, chain.writable, bytes(self._pending[:chain.writable_len]))
            del self._pending[:n]
            q.push(chain.head, n)
            done = True
        if done:
            t.signal_used(q)

    def receive(self, data: bytes) -> int:
        """Host input for the guest (called from the stdin thread)."""
        t = self.transport
        if t is None:
            return 0
        with t.lock:
            room = PENDING_MAX - len(self._pending)
            taken = data[:max(room, 0)]
            self._pending += taken
            t.run_guarded(self._fill)
        return len(taken)

    # -- snapshot -------------------------------------------------------------
    def save_state(self) -> Dict:
        """Host input not yet given to the guest, and the transmit counter."""
        return {"pending": b64(self._pending), "tx_bytes": self.tx_bytes}

    def load_state(self, state: Dict) -> None:
        r = StateReader("virtio-console", state, ("pending", "tx_bytes"))
        pending = r.bytes("pending", PENDING_MAX)
        tx_bytes = r.int("tx_bytes", 0, (1 << 63) - 1)
        self._pending, self.tx_bytes = bytearray(pending), tx_bytes

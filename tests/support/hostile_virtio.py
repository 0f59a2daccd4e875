"""A fake guest driver for virtio-mmio devices that breaks the rules on
purpose (pure Python over a real anonymous GuestMemory, no KVM): it writes
arbitrary descriptor tables and available rings, so tests can feed a device
floods and malformed chains and check what the device does with them."""
import struct

from pyvmm.devices import virtio_mmio as T
from pyvmm.memory import GuestMemory

RAM = 0x40000000
QUEUE_SPACING = 0x10000  # per queue: descriptors +0, available ring +0x4000, used ring +0x8000
DATA = RAM + 0x100000    # first byte free for buffers


class HostileGuest:
    def __init__(self, backend, ram_size: int, qsize: int = 256):
        self.mem = GuestMemory()
        self.mem.add(RAM, ram_size)
        self.levels = []
        self.dev = T.VirtioMmio(0xA000000, 16, self.mem, self.levels.append, backend)
        self.qsize = qsize
        self.avail_idx = {}

    def w(self, off, v):
        self.dev.write(off, (v & 0xFFFFFFFF).to_bytes(4, "little"))

    def r(self, off):
        return int.from_bytes(self.dev.read(off, 4), "little")

    def ring(self, q):
        base = RAM + QUEUE_SPACING * q
        return base, base + 0x4000, base + 0x8000

    def init(self):
        self.w(T.R_STATUS, 0)
        self.w(T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER)
        self.w(T.R_DRIVER_FEATURES_SEL, 1)
        self.w(T.R_DRIVER_FEATURES, 1)  # VERSION_1 (bit 32)
        self.w(T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK)
        for q in range(len(self.dev.queues)):
            self.w(T.R_QUEUE_SEL, q)
            self.w(T.R_QUEUE_NUM, self.qsize)
            for reg, addr in zip((T.R_QUEUE_DESC_LOW, T.R_QUEUE_DRIVER_LOW, T.R_QUEUE_DEVICE_LOW), self.ring(q)):
                self.w(reg, addr)
                self.w(reg + 4, 0)
            self.w(T.R_QUEUE_READY, 1)
            self.avail_idx[q] = 0
        self.w(T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK | T.DRIVER_OK)
        assert self.dev.error is None
        return self

    def table(self, q, descriptors):
        """Write raw descriptors (addr, len, flags, next) from index 0."""
        desc, _, _ = self.ring(q)
        for i, (addr, length, flags, nxt) in enumerate(descriptors):
            self.mem.write(desc + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def offer(self, q, heads, idx_step=None):
        """Put ``heads`` in the available ring; the index moves by len(heads)
        (or by ``idx_step``: a lie about how many there are)."""
        _, avail, _ = self.ring(q)
        idx = self.avail_idx[q]
        for i, h in enumerate(heads):
            self.mem.write(avail + 4 + 2 * ((idx + i) % self.qsize), struct.pack("<H", h & 0xFFFF))
        idx = (idx + (len(heads) if idx_step is None else idx_step)) & 0xFFFF
        self.avail_idx[q] = idx
        self.mem.write(avail + 2, struct.pack("<H", idx))

    def notify(self, q):
        self.w(T.R_QUEUE_NOTIFY, q)

    def used_idx(self, q):
        _, _, used = self.ring(q)
        return struct.unpack("<H", self.mem.read(used + 2, 2))[0]

    def close(self):
        self.mem.close()

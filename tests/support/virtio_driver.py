"""A minimal virtio-mmio driver written from the virtio 1.2 spec (4.2.3 device
initialisation) for the device-model tests: a transport over guest RAM, queue
set-up, descriptor chains, the used ring, a virtio-blk request and the
transport's writable registers."""
import struct

from pyvmm.devices import virtio_mmio as T
from pyvmm.devices.virtqueue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from pyvmm.memory import GuestMemory

RAM, RAM_SIZE = 0x40000000, 0x40000
QSIZE = 8


class Driver:
    """``levels``: every call of the transport's ``raise_irq`` (edge-triggered,
    the default: one True per edge; ``trigger="level"``: the line's changes)."""

    def __init__(self, backend, trigger=T.TRIGGER_EDGE):
        self.mem = GuestMemory()
        self.mem.add(RAM, RAM_SIZE)
        self.levels = []
        self.dev = T.VirtioMmio(0xA000000, 16, self.mem, self.levels.append, backend, trigger)
        self.next_data = RAM + 0x10000
        self.avail_idx = {}

    def r(self, off):
        value = self.dev.read(off, 4)
        if off == T.R_INTERRUPT_STATUS:  # the vCPU thread's fast path reads the same
            assert self.dev.fast_reads()[off]() == value
        return int.from_bytes(value, "little")

    def w(self, off, v):
        self.dev.write(off, (v & 0xFFFFFFFF).to_bytes(4, "little"))

    def qbase(self, q):
        return RAM + 0x1000 * (1 + 3 * q)

    def init(self, features=T.VIRTIO_F_VERSION_1):
        assert self.r(T.R_MAGIC) == T.MAGIC and self.r(T.R_VERSION) == 2
        self.w(T.R_STATUS, 0)
        self.w(T.R_STATUS, T.ACKNOWLEDGE)
        self.w(T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER)
        self.w(T.R_DEVICE_FEATURES_SEL, 1)
        assert self.r(T.R_DEVICE_FEATURES) & 1  # VERSION_1
        for sel in (0, 1):
            self.w(T.R_DRIVER_FEATURES_SEL, sel)
            self.w(T.R_DRIVER_FEATURES, features >> (32 * sel))
        self.w(T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK)
        if not self.r(T.R_STATUS) & T.FEATURES_OK:
            return False
        for q in range(len(self.dev.queues)):
            base = self.qbase(q)
            self.w(T.R_QUEUE_SEL, q)
            assert self.r(T.R_QUEUE_NUM_MAX) >= QSIZE
            self.w(T.R_QUEUE_NUM, QSIZE)
            for reg, addr in ((T.R_QUEUE_DESC_LOW, base), (T.R_QUEUE_DRIVER_LOW, base + 0x800),
                              (T.R_QUEUE_DEVICE_LOW, base + 0x1000)):
                self.w(reg, addr)
                self.w(reg + 4, 0)
            self.w(T.R_QUEUE_READY, 1)
            assert self.r(T.R_QUEUE_READY) == 1
            self.avail_idx[q] = 0
        self.w(T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK | T.DRIVER_OK)
        return True

    def buf(self, data=b"", size=None):
        addr = self.next_data
        n = len(data) if size is None else size
        self.mem.write(addr, data.ljust(n, b"\0"))
        self.next_data += (n + 15) // 16 * 16 + 16
        return addr, n

    def submit(self, q, segs, head=0, notify=True):
        """segs: (addr, len, writable). Chain starts at descriptor ``head``."""
        base = self.qbase(q)
        for i, (a, n, wr) in enumerate(segs):
            flags = (VIRTQ_DESC_F_WRITE if wr else 0) | (VIRTQ_DESC_F_NEXT if i + 1 < len(segs) else 0)
            self.mem.write(base + 16 * (head + i), struct.pack("<QIHH", a, n, flags, head + i + 1))
        idx = self.avail_idx[q]
        self.mem.write(base + 0x800 + 4 + 2 * (idx % QSIZE), struct.pack("<H", head))
        self.avail_idx[q] = idx + 1
        self.mem.write(base + 0x800 + 2, struct.pack("<H", idx + 1))
        if notify:
            self.w(T.R_QUEUE_NOTIFY, q)

    def used(self, q):
        base = self.qbase(q) + 0x1000
        idx = struct.unpack("<H", self.mem.read(base + 2, 2))[0]
        return idx, [struct.unpack("<II", self.mem.read(base + 4 + 8 * i, 8)) for i in range(min(idx, QSIZE))]

    def ack(self):
        st_ = self.r(T.R_INTERRUPT_STATUS)
        self.w(T.R_INTERRUPT_ACK, st_)
        return st_


def blk_request(d, typ, sector, data=b"", read_len=0):
    hdr = d.buf(struct.pack("<IIQ", typ, 0, sector))
    segs = [(hdr[0], hdr[1], False)]
    if data:
        a, n = d.buf(data)
        segs.append((a, n, False))
    rd = None
    if read_len:
        rd = d.buf(size=read_len)
        segs.append((rd[0], rd[1], True))
    status = d.buf(size=1)
    segs.append((status[0], 1, True))
    d.submit(0, segs)
    return rd, status


REGS = [T.R_DEVICE_FEATURES_SEL, T.R_DRIVER_FEATURES, T.R_DRIVER_FEATURES_SEL, T.R_QUEUE_SEL, T.R_QUEUE_NUM,
        T.R_QUEUE_READY, T.R_QUEUE_NOTIFY, T.R_INTERRUPT_ACK, T.R_STATUS, T.R_QUEUE_DESC_LOW, T.R_QUEUE_DESC_HIGH,
        T.R_QUEUE_DRIVER_LOW, T.R_QUEUE_DRIVER_HIGH, T.R_QUEUE_DEVICE_LOW, T.R_QUEUE_DEVICE_HIGH]

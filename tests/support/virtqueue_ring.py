"""A split virtqueue's rings in a small guest RAM that asserts no access is
even attempted outside it, for the virtqueue and device-state tests."""
import struct

from pyvmm.devices import virtqueue as vq
from pyvmm.memory import GuestMemory

RAM, RAM_SIZE = 0x10000, 0x10000
DESC, AVAIL, USED = RAM, RAM + 0x1000, RAM + 0x2000
DATA = RAM + 0x4000


class CheckedMemory:
    """GuestMemory plus an assertion that no access is even attempted outside RAM."""

    def __init__(self):
        self.mem = GuestMemory()
        self.mem.add(RAM, RAM_SIZE)
        self.accesses = 0

    def _check(self, gpa, n):
        assert RAM <= gpa and gpa + n <= RAM + RAM_SIZE, f"access {gpa:#x}+{n:#x} outside RAM"
        self.accesses += 1

    def contains(self, gpa, n):
        return self.mem.contains(gpa, n)

    def read(self, gpa, n):
        self._check(gpa, n)
        return self.mem.read(gpa, n)

    def write(self, gpa, data):
        self._check(gpa, len(data))
        self.mem.write(gpa, data)

    def poke(self, gpa, data):  # the test's own (driver) writes
        self.mem.write(gpa, data)


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def queue(mem, size=8):
    q = vq.Virtqueue(mem, max_size=16)
    q.size, q.desc_addr, q.avail_addr, q.used_addr = size, DESC, AVAIL, USED
    q.activate()
    return q


def publish(mem, heads, start=0):
    for i, h in enumerate(heads):
        mem.poke(AVAIL + 4 + 2 * ((start + i) % 8), struct.pack("<H", h))
    mem.poke(AVAIL + 2, struct.pack("<H", start + len(heads)))

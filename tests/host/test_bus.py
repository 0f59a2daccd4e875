"""The MMIO bus: dispatch by address, overlaps refused."""
import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.devices.bus import BusOverlap, MmioBus


class Recorder:
    def __init__(self):
        self.log = []

    def read(self, offset, length):
        self.log.append(("r", offset, length))
        return bytes(range(1, length + 1))

    def write(self, offset, data):
        self.log.append(("w", offset, bytes(data)))


def test_dispatch_with_offsets():
    bus, a, b = MmioBus(), Recorder(), Recorder()
    bus.register(0x1000, 0x100, a, "a")
    bus.register(0x2000, 0x200, b, "b")
    assert bus.read(0x1004, 4) == b"\x01\x02\x03\x04"
    bus.write(0x21FC, b"\xaa")
    assert a.log == [("r", 4, 4)] and b.log == [("w", 0x1FC, b"\xaa")]


def test_unmapped_reads_zero_and_counts():
    bus = MmioBus()
    bus.register(0x1000, 0x100, Recorder())
    assert bus.read(0x5000, 4) == bytes(4)
    bus.write(0x10FE, b"1234")  # straddles the end: not the device's
    assert bus.unhandled == 2


def test_overlap_refused_with_names():
    bus = MmioBus()
    bus.register(0x1000, 0x100, Recorder(), "uart")
    with pytest.raises(BusOverlap, match="overlaps uart"):
        bus.register(0x10F0, 0x100, Recorder(), "virtio")
    bus.register(0x1100, 0x100, Recorder(), "adjacent")  # touching is fine


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 1 << 12)), min_size=1, max_size=12))
def test_registered_ranges_never_overlap(ranges):
    bus = MmioBus()
    for base, size in ranges:
        try:
            bus.register(base, size, Recorder())
        except BusOverlap:
            pass
    maps = bus.mappings()
    for x, y in zip(maps, maps[1:]):
        assert x.end <= y.base


def test_fast_reads_are_registered_at_their_absolute_address():
    from pyvmm.devices.virtio_mmio import R_INTERRUPT_STATUS, SIZE, VirtioMmio
    from pyvmm.devices.virtio_rng import VirtioRng

    bus = MmioBus()
    dev = VirtioMmio(0x0A00_0200, 17, None, lambda level: None, VirtioRng())
    bus.register(0x0A00_0200, SIZE, dev)
    assert set(bus.fast_reads) == {0x0A00_0200 + R_INTERRUPT_STATUS}
    assert bus.fast_reads[0x0A00_0200 + R_INTERRUPT_STATUS]() == dev.read(R_INTERRUPT_STATUS, 4)

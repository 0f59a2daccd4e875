"""Dirty page tracking on any host: KVM's bitmap layout both ways, the
pages pyvmm's own device models write (GuestMemory.write), and DirtyLog's
calls against a fake VM fd (tests/support/fake_dirty_vm.py)."""
import mmap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm import dirty_log
from pyvmm.memory import GuestMemory
from support.fake_dirty_vm import FakeDirtyVm

PAGE = mmap.PAGESIZE


def test_bitmap_size_is_whole_64_bit_words():
    assert dirty_log.bitmap_bytes(0) == 0
    assert dirty_log.bitmap_bytes(1) == 8
    assert dirty_log.bitmap_bytes(64) == 8
    assert dirty_log.bitmap_bytes(65) == 16
    with pytest.raises(ValueError):
        dirty_log.bitmap_bytes(-1)


def test_bitmap_bit_order_is_kvms():
    bm = bytearray(16)
    bm[0] = 0b1000_0001  # pages 0 and 7
    bm[8] = 0b10  # page 65
    assert dirty_log.bitmap_pages(bm, 128) == [0, 7, 65]


def test_padding_bits_past_the_slot_are_ignored():
    bm = bytearray(8)
    bm[1] = 0xFF  # pages 8..15, the slot has 10
    assert dirty_log.bitmap_pages(bm, 10) == [8, 9]


def test_a_short_bitmap_is_refused():
    with pytest.raises(ValueError, match="too short"):
        dirty_log.bitmap_pages(bytes(1), 9)


def test_pages_outside_the_slot_are_refused():
    with pytest.raises(ValueError, match="outside"):
        dirty_log.pages_bitmap([10], 10)
    with pytest.raises(ValueError, match="outside"):
        dirty_log.pages_bitmap([-1], 10)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 40000).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(n - 1, 0)))
                                                          if n else st.just(set()))))
def test_bitmap_round_trip(case):
    npages, pages = case
    bm = dirty_log.pages_bitmap(pages, npages)
    assert len(bm) == dirty_log.bitmap_bytes(npages)
    assert dirty_log.bitmap_pages(bm, npages) == sorted(pages)


def test_merge_is_a_sorted_union_per_slot():
    assert dirty_log.merge({0: [3, 1]}, {0: {1, 2}, 1: [5]}) == {0: [1, 2, 3], 1: [5]}


def _memory(pages=64):
    mem = GuestMemory()
    mem.add(0x4000_0000, pages * PAGE)
    return mem


def test_guest_memory_records_its_writes_only_while_tracking():
    mem = _memory()
    base = mem.regions[0].gpa
    mem.write(base, b"x")
    mem.track_writes(True)
    assert mem.take_written() == {}
    mem.write(base + PAGE - 1, b"ab")  # straddles pages 0 and 1
    mem.write(base + 5 * PAGE, b"")  # nothing written: nothing dirty
    mem.write(base + 9 * PAGE + 17, bytes(3 * PAGE))  # pages 9..12
    assert mem.take_written() == {0: {0, 1, 9, 10, 11, 12}}
    assert mem.take_written() == {}  # taken
    mem.track_writes(False)
    mem.write(base, b"y")
    assert mem.take_written() == {}
    mem.close()


@pytest.mark.parametrize("manual", [True, False])
def test_dirty_log_merges_kvm_and_device_writes(manual):
    mem = _memory()
    vm = FakeDirtyVm(manual)
    log = dirty_log.DirtyLog(vm, mem)
    vm.guest_writes(0, 1)  # before start: not logged
    log.start()
    assert log.manual is manual and vm.flags == {0: 1}
    vm.guest_writes(0, 3, 63)
    mem.write(mem.regions[0].gpa + 7 * PAGE, b"dev")
    assert log.collect() == {0: [3, 7, 63]}
    assert log.collect() == {}  # protected again: nothing new
    vm.guest_writes(0, 3)
    assert log.collect() == {0: [3]}
    if manual:
        assert ("clear", 0, 1) in vm.calls
    vm.guest_writes(0, 5)
    before = len([c for c in vm.calls if c[0] == "clear"])
    assert log.collect(protect=False) == {0: [5]}  # the last look: read, not protected again
    assert len([c for c in vm.calls if c[0] == "clear"]) == before
    log.stop()
    assert vm.flags == {0: 0}
    mem.write(mem.regions[0].gpa, b"after")
    assert mem.take_written() == {}
    log.stop()  # idempotent
    with pytest.raises(RuntimeError):
        log.collect()
    mem.close()


def test_readonly_slots_are_not_logged():
    mem = GuestMemory()
    mem.add(0x0, 4 * PAGE, readonly=True)
    mem.add(0x4000_0000, 4 * PAGE)
    vm = FakeDirtyVm()
    log = dirty_log.DirtyLog(vm, mem)
    log.start()
    assert vm.flags == {1: 1}
    log.stop()
    mem.close()

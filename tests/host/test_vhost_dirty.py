"""vhost's dirty log (pyvmm/vhost/dirty.py, pyvmm/snapshot/vhost_log.py):
the guest-physical bitmap mapped to slots and pages, the two bitmaps'
swap (with a fake back end that writes to whichever bitmap it was given,
named as a fake), what a device tells its plane when logging turns on and
off (tests/support/fake_vhost.py's FakePlane), which machines are refused
and why, the planes a migration holds stopped, and the destination's taps.
The real log is exercised by tests/kvm/test_migrate_vhost.py."""
import threading
import types

import pytest

from pyvmm import dirty_log
from pyvmm.devices import virtio_mmio as T
from pyvmm.devices import virtio_net as N
from pyvmm.devices.virtio_fs import VirtioFs
from pyvmm.devices.virtio_vsock import VirtioVsock
from pyvmm.migration import taps
from pyvmm.snapshot import machine_snapshot, vhost_log
from pyvmm.vhost import dirty
from pyvmm.vhost.base import VHOST_F_LOG_ALL
from support.fake_machine import DeviceLists
from support.fake_vhost import FakePlane
from test_dirty_log import FakeDirtyVm, _memory
from test_net_devices import RAM, VHOST_NET_FEATURES, FakeTap, bring_up

VP = dirty.VHOST_PAGE
LOG_ALL = 1 << VHOST_F_LOG_ALL


def marked(*pages, size=None):
    """A vhost log with the 4 KiB guest pages ``pages`` set."""
    bm = bytearray(size or (max(pages) // 8 + 8))
    for p in pages:
        bm[p // 8] |= 1 << (p % 8)
    return bm


# ---- the bitmap ----------------------------------------------------------------------

def test_the_log_covers_guest_ram_from_address_zero_in_whole_words():
    assert dirty.log_bytes(1) == 8
    assert dirty.log_bytes(64 * VP) == 8 and dirty.log_bytes(64 * VP + 1) == 16
    assert dirty.log_bytes(0x4000_0000 + (192 << 20)) == (0x4000_0000 + (192 << 20)) // VP // 8
    with pytest.raises(ValueError):
        dirty.log_bytes(0)
    with pytest.raises(ValueError):
        dirty.log_bytes(1 << 60)  # a bitmap of 2**45 bytes is not allocated


def test_bits_map_to_each_slots_pages_and_bits_outside_guest_ram_are_ignored():
    base = RAM // VP
    bm = marked(0, 5, base - 1, base, base + 3, base + 256, size=(base + 512) // 8)
    regions = [(0, RAM, 256 * VP)]
    assert dirty.slot_pages(bm, regions, VP) == {0: [0, 3]}  # base+256 is past the slot, 0..base-1 before it
    # 16 KiB and 64 KiB host pages: four or sixteen log bits per page
    assert dirty.slot_pages(bm, regions, 4 * VP) == {0: [0]}
    assert dirty.slot_pages(marked(base + 4, base + 19, size=(base + 512) // 8), regions, 16 * VP) == {0: [0, 1]}
    # a slot that starts inside a byte of the log (bit 3 of its byte)
    bm = marked(3, 4, 10, 11, size=8)
    assert dirty.slot_pages(bm, [(1, 3 * VP, 8 * VP)], VP) == {1: [0, 1, 7]}
    assert dirty.slot_pages(bytearray(64), [(0, 0, 8 * VP), (1, 64 * VP, 8 * VP)], VP) == {}


def test_a_log_too_short_for_a_slot_or_pages_off_the_host_page_are_refused():
    with pytest.raises(ValueError, match="ends past"):
        dirty.slot_pages(bytearray(8), [(0, 0, 128 * VP)], VP)
    with pytest.raises(ValueError, match="not on"):
        dirty.slot_pages(bytearray(8), [(0, VP, 4 * VP)], 4 * VP)
    with pytest.raises(ValueError, match="multiple"):
        dirty.slot_pages(bytearray(8), [(0, 0, 4 * VP)], 2048)


# ---- the swap, with a fake back end --------------------------------------------------

class FakeBitmap:
    """A bitmap with a made-up address (fake: no memory is handed to a kernel)."""
    made = []

    def __init__(self, size):
        self.buf = bytearray(size)
        self.address = 0x1000 * (len(FakeBitmap.made) + 1)
        self.closed = False
        FakeBitmap.made.append(self)

    def view(self):
        return memoryview(self.buf)

    def clear(self):
        self.buf[:] = bytes(len(self.buf))

    def close(self):
        self.closed = True


class FakeBackEnd:
    """Fake vhost back end: logs its writes to the bitmap it was last given."""

    def __init__(self, fail_start=False, fail_stop=False):
        self.base = None
        self.logging = False
        self.fail_start, self.fail_stop = fail_start, fail_stop
        self.calls = []

    def log_start(self, address):
        if self.fail_start:
            raise OSError(14, "Bad address")
        self.calls.append("start")
        self.base, self.logging = address, True

    def log_to(self, address):
        self.calls.append("to")
        self.base = address

    def log_stop(self):
        self.calls.append("stop")
        if self.fail_stop:
            raise OSError(5, "I/O error")
        self.logging = False

    def write(self, gpa):
        assert self.logging
        bm = next(b for b in FakeBitmap.made if b.address == self.base)
        page = gpa // VP
        bm.buf[page // 8] |= 1 << (page % 8)


def new_log(*backends, regions=((0, RAM, 64 * VP),)):
    FakeBitmap.made = []
    return dirty.VhostLog(backends, regions, VP, alloc=FakeBitmap)


def test_each_look_switches_bitmaps_before_reading_and_clearing_the_old_one():
    a, b = FakeBackEnd(), FakeBackEnd()
    log = new_log(a, b)
    assert log.collect() == {}  # not started: nothing
    log.start()
    first, second = FakeBitmap.made
    assert a.base == b.base == first.address
    a.write(RAM + 3 * VP)
    b.write(RAM + 3 * VP + 17)
    b.write(RAM + 9 * VP)
    assert log.collect() == {0: [3, 9]}
    assert a.base == b.base == second.address and not any(first.buf)  # read, then cleared
    a.write(RAM + 5 * VP)  # after the switch: the next look's
    assert log.collect() == {0: [5]}
    assert a.base == first.address and not any(second.buf)
    assert log.collect() == {}
    log.stop()
    assert not a.logging and not b.logging and first.closed and second.closed
    log.stop()  # idempotent
    assert a.calls.count("stop") == 1


def test_a_back_end_that_cannot_log_undoes_the_others():
    a, bad = FakeBackEnd(), FakeBackEnd(fail_start=True)
    log = new_log(a, bad)
    with pytest.raises(OSError):
        log.start()
    assert a.calls == ["start", "stop"] and not log.active
    assert all(b.closed for b in FakeBitmap.made)


def test_bitmaps_a_back_end_may_still_log_to_stay_mapped():
    a, stuck = FakeBackEnd(), FakeBackEnd(fail_stop=True)
    log = new_log(a, stuck)
    log.start()
    with pytest.raises(OSError):
        log.stop()
    assert not a.logging and not any(b.closed for b in FakeBitmap.made)


def test_kvms_log_and_the_back_ends_are_merged_and_stopped_together():
    mem = _memory()
    vm = FakeDirtyVm(True)
    r = mem.regions[0]
    be = FakeBackEnd()
    FakeBitmap.made = []
    log = dirty_log.DirtyLog(vm, mem, [dirty.VhostLog([be], [(r.slot, r.gpa, r.size)], dirty_log.PAGE,
                                                      alloc=FakeBitmap)])
    log.start()
    assert be.logging
    vm.guest_writes(0, 1)
    be.write(r.gpa + 2 * dirty_log.PAGE)
    assert log.collect() == {0: [1, 2]}
    be.write(r.gpa + 1 * dirty_log.PAGE)
    assert log.collect(protect=False) == {0: [1]}
    log.stop()
    assert not be.logging and vm.flags == {0: 0}
    mem.close()


# ---- what a device tells its plane ---------------------------------------------------

def test_a_net_device_logs_its_used_rings_and_all_writes_while_the_log_is_on():
    plane = FakePlane(VHOST_NET_FEATURES)
    net = N.VirtioNet(FakeTap(), plane, N.parse_mac("52:54:00:12:34:56"))
    dev, mem, kicks = bring_up(net, T.VIRTIO_F_VERSION_1 | N.F_MAC | N.F_MRG_RXBUF)
    negotiated = plane.calls[0][1]
    hva = mem.regions[0].host_address()
    plane.calls.clear()
    net.log_start(dev, 0x7000)
    assert plane.calls[0] == ("set_log_base", 0x7000)  # the base before the feature bit
    assert ("set_vring_addr", 0, hva + 0x4000, hva + 0x5000, hva + 0x6000, RAM + 0x6000) in plane.calls
    assert ("set_vring_addr", 1, hva + 0x8000, hva + 0x9000, hva + 0xA000, RAM + 0xA000) in plane.calls
    assert plane.calls[-1] == ("set_features", negotiated | LOG_ALL)
    plane.calls.clear()
    net.log_to(0x9000)
    assert plane.calls == [("set_log_base", 0x9000)]
    # the plane set up again while the log is on (a driver restarting the device): still logged
    plane.calls.clear()
    net.activate(dev)
    assert plane.calls[0] == ("set_log_base", 0x9000) and plane.calls[1] == ("set_features", negotiated | LOG_ALL)
    assert ("set_vring_addr", 0, hva + 0x4000, hva + 0x5000, hva + 0x6000, RAM + 0x6000) in plane.calls
    plane.calls.clear()
    net.log_stop(dev)
    assert plane.calls[0] == ("set_features", negotiated)
    assert ("set_vring_addr", 0, hva + 0x4000, hva + 0x5000, hva + 0x6000) in plane.calls
    mem.close()


def test_a_device_not_started_yet_only_takes_the_base():
    plane = FakePlane(VHOST_NET_FEATURES)
    net = N.VirtioNet(FakeTap(), plane, N.parse_mac("52:54:00:12:34:56"))
    net.log_start(None, 0x7000)
    net.log_stop(None)
    assert plane.calls == [("set_log_base", 0x7000)]


# ---- which machines, and the planes held stopped -------------------------------------

def machine(*backends):
    return DeviceLists([types.SimpleNamespace(base=0xA000000 + 0x200 * i, backend=b, lock=threading.RLock())
                        for i, b in enumerate(backends)])


def test_vhost_net_is_tracked_vhost_vsock_and_virtio_fs_are_refused_with_the_reason():
    net = N.VirtioNet(FakeTap(), FakePlane(VHOST_NET_FEATURES))
    assert vhost_log.untracked(machine(net)) is None
    plane = FakePlane(0)
    vsock = VirtioVsock(plane, 5)
    why = vhost_log.untracked(machine(net, vsock))
    assert why.startswith("its VirtioVsock at 0xa000200 runs on a vhost data plane: vhost-vsock does not put the "
                          "packets it writes into guest memory in its dirty log"), why
    fs = VirtioFs(FakePlane(0), "tag")
    assert "virtiofsd" in vhost_log.untracked(machine(fs))


def test_a_migration_holds_the_planes_stopped_through_a_snapshot_then_restarts_them():
    plane = FakePlane(VHOST_NET_FEATURES)
    net = N.VirtioNet(FakeTap(), plane, N.parse_mac("52:54:00:12:34:56"))
    dev, mem, kicks = bring_up(net, T.VIRTIO_F_VERSION_1 | N.F_MAC)
    m = DeviceLists([dev])
    plane.calls.clear()
    held = vhost_log.stop_planes(m)
    assert net.held and ("net_set_backend", 0, -1) in plane.calls and ("get_vring_base", 0) in plane.calls
    plane.calls.clear()
    assert vhost_log.stop_planes(m) == []  # already held
    with machine_snapshot._planes_stopped(m):  # a snapshot's read meanwhile neither stops nor restarts them
        pass
    assert plane.calls == []
    vhost_log.restart_planes(held)
    assert not net.held and ("net_set_backend", 0, FakeTap.fd) in plane.calls
    mem.close()


class FakeQueueTap:
    """Fake tap: records TUNSETQUEUE."""

    def __init__(self, multi_queue, created):
        self.multi_queue, self.created = multi_queue, created
        self.queue = []

    def tunsetqueue(self, enable):
        self.queue.append(enable)


def test_the_destination_disables_only_queues_of_multi_queue_taps_it_did_not_create():
    shared, own, single = FakeQueueTap(True, False), FakeQueueTap(True, True), FakeQueueTap(False, False)
    m = machine(*(types.SimpleNamespace(tap=t) for t in (shared, own, single)), types.SimpleNamespace())
    standby = taps.standby(m)
    assert standby == [shared] and shared.queue == [False] and own.queue == single.queue == []
    taps.take_over(standby)
    assert shared.queue == [False, True]


def test_a_real_bitmap_is_page_aligned_memory_of_this_process_seen_through_its_address():
    from pyvmm._ffi import ffi

    b = dirty.Bitmap(24)
    try:
        assert b.address and b.address % 4096 == 0
        ffi.cast("uint8_t *", b.address)[17] = 0x80  # what vhost's set_bit does, at the address it was given
        assert bytes(b.view())[17] == 0x80 and len(b.view()) == 24
        b.clear()
        assert not any(b.view())
    finally:
        b.close()


def test_a_taps_enabled_queues_are_counted_from_sysfs(tmp_path, monkeypatch):
    from pyvmm.net import tap

    q = tmp_path / "pv0" / "queues"
    q.mkdir(parents=True)
    for name in ("rx-0", "tx-0", "rx-1", "tx-1"):
        (q / name).mkdir()
    monkeypatch.setattr(tap, "SYS_NET", str(tmp_path))
    assert tap.enabled_queues("pv0") == 2
    assert tap.enabled_queues("gone") == 0


def test_only_a_source_on_this_host_has_its_taps_shared():
    import socket

    a, b = socket.socketpair()
    try:
        assert taps.same_host(a)
    finally:
        a.close()
        b.close()
    server = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(server.getsockname())
    s, _ = server.accept()
    try:
        assert taps.same_host(s)
    finally:
        for x in (c, s, server):
            x.close()
    lone = socket.socket()  # not connected: no peer, so not shared
    try:
        assert not taps.same_host(lone)
    finally:
        lone.close()

"""virtio-mmio transport with the blk and console backends, driven by a
minimal driver written from the virtio 1.2 spec (4.2.3 device initialisation)."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvmm.devices import virtio_blk as B
from pyvmm.devices import virtio_mmio as T
from pyvmm.devices import virtqueue
from pyvmm.devices.virtio_console import VirtioConsole
from pyvmm.devices.virtio_net import VirtioNetPython
from pyvmm.devices.virtio_rng import CHUNK_MAX, VirtioRng
from pyvmm.errors import UsageProblem
from pyvmm.memory import GuestMemory
from support.virtio_driver import RAM, RAM_SIZE, REGS, Driver, blk_request

@pytest.fixture
def disk(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(range(256)) * 64)  # 16 KiB = 32 sectors
    return p


def test_blk_config_and_features(disk):
    d = Driver(B.VirtioBlk(str(disk)))
    assert d.r(T.R_DEVICE_ID) == 2
    assert struct.unpack("<Q", d.dev.read(T.CONFIG, 8))[0] == 32
    d.w(T.R_DEVICE_FEATURES_SEL, 0)
    feats = d.r(T.R_DEVICE_FEATURES)
    assert feats & B.VIRTIO_BLK_F_FLUSH and not feats & B.VIRTIO_BLK_F_RO


def test_blk_read_write_flush_getid(disk):
    d = Driver(B.VirtioBlk(str(disk)))
    assert d.init(T.VIRTIO_F_VERSION_1 | B.VIRTIO_BLK_F_FLUSH)
    rd, status = blk_request(d, B.T_IN, 1, read_len=512)
    assert d.mem.read(status[0], 1) == b"\0"
    assert d.mem.read(rd[0], 512) == (bytes(range(256)) * 2)
    # edge-triggered: one edge per batch; the used-buffer bit reads set while DRIVER_OK
    assert d.levels == [True] and d.ack() == T.INT_USED_BUFFER and d.levels == [True]
    idx, elems = d.used(0)
    assert idx == 1 and elems[0] == (0, 513)
    _, status = blk_request(d, B.T_OUT, 3, data=b"\xab" * 1024)
    assert d.mem.read(status[0], 1) == b"\0"
    assert disk.read_bytes()[3 * 512:5 * 512] == b"\xab" * 1024
    _, status = blk_request(d, B.T_FLUSH, 0)
    assert d.mem.read(status[0], 1) == b"\0"
    rd, status = blk_request(d, B.T_GET_ID, 0, read_len=20)
    assert d.mem.read(rd[0], 8) == b"disk.img"
    _, status = blk_request(d, 99, 0)
    assert d.mem.read(status[0], 1) == bytes([B.S_UNSUPP])


def test_blk_out_of_range_and_readonly(disk):
    d = Driver(B.VirtioBlk(str(disk), readonly=True))
    d.w(T.R_DEVICE_FEATURES_SEL, 0)
    assert d.r(T.R_DEVICE_FEATURES) & B.VIRTIO_BLK_F_RO
    assert d.init(T.VIRTIO_F_VERSION_1 | B.VIRTIO_BLK_F_RO)
    _, status = blk_request(d, B.T_OUT, 0, data=b"x" * 512)
    assert d.mem.read(status[0], 1) == bytes([B.S_IOERR])
    assert disk.read_bytes()[:4] == b"\0\1\2\3"
    _, status = blk_request(d, B.T_IN, 31, read_len=1024)  # runs past the end
    assert d.mem.read(status[0], 1) == bytes([B.S_IOERR])
    _, status = blk_request(d, B.T_IN, 1 << 60, read_len=512)
    assert d.mem.read(status[0], 1) == bytes([B.S_IOERR])
    assert d.dev.error is None


def test_features_not_offered_are_refused(disk):
    d = Driver(B.VirtioBlk(str(disk)))
    assert not d.init(T.VIRTIO_F_VERSION_1 | (1 << 40))
    d2 = Driver(B.VirtioBlk(str(disk)))
    assert not d2.init(0)  # a legacy driver (no VERSION_1)


def test_malformed_request_needs_reset_then_recovers(disk):
    d = Driver(B.VirtioBlk(str(disk)))
    assert d.init()
    hdr = d.buf(struct.pack("<IIQ", B.T_IN, 0, 0))
    d.submit(0, [(hdr[0], hdr[1], False)])  # no status byte
    assert d.r(T.R_STATUS) & T.DEVICE_NEEDS_RESET
    assert d.r(T.R_INTERRUPT_STATUS) & T.INT_CONFIG_CHANGE and d.levels[-1] is True
    assert "status byte" in d.dev.error
    # ignored while broken
    d.submit(0, [(0xDEAD0000, 16, False)])
    d.w(T.R_STATUS, 0)  # reset
    assert d.r(T.R_STATUS) == 0 and d.dev.error is None and d.r(T.R_INTERRUPT_STATUS) == 0
    assert d.init()
    _, status = blk_request(d, B.T_IN, 0, read_len=512)
    assert d.mem.read(status[0], 1) == b"\0"


def test_descriptor_outside_ram_needs_reset(disk):
    d = Driver(B.VirtioBlk(str(disk)))
    assert d.init()
    d.submit(0, [(RAM + RAM_SIZE - 8, 16, False), (RAM + 0x20000, 1, True)])
    assert d.r(T.R_STATUS) & T.DEVICE_NEEDS_RESET and "outside guest RAM" in d.dev.error


def test_console_tx_and_rx():
    out = []
    con = VirtioConsole(out.append)
    d = Driver(con)
    assert d.r(T.R_DEVICE_ID) == 3
    assert con.receive(b"early") == 5  # kept until the driver gives buffers
    assert d.init()
    a, n = d.buf(b"hello from the guest")
    d.submit(1, [(a, n, False)])
    assert b"".join(out) == b"hello from the guest"
    rx = d.buf(size=64)
    d.submit(0, [(rx[0], rx[1], True)])
    idx, elems = d.used(0)
    assert d.mem.read(rx[0], 5) == b"early" and elems[0] == (0, 5)
    rx2 = d.buf(size=64)
    d.submit(0, [(rx2[0], rx2[1], True)], head=1)
    con.receive(b"typed")
    assert d.mem.read(rx2[0], 5) == b"typed"
    assert con.tx_bytes == 20


def test_console_gives_a_chain_back_before_writing_it():
    """The guest (hvc spins until its chunk is used) goes on while the host
    writes: the used index has moved when the output is called."""
    seen = []
    con = VirtioConsole(lambda data: seen.append((data, d.used(1)[0])))
    d = Driver(con)
    assert d.init()
    a, n = d.buf(b"first")
    b, m = d.buf(b"second")
    d.submit(1, [(a, n, False)], notify=False)
    d.submit(1, [(b, m, False)], head=1)
    assert seen == [(b"firstsecond", 2)] and con.tx_bytes == 11  # one write for the batch
    assert d.levels == [True]


@pytest.mark.skipif(not virtqueue.have_fence(), reason="no libatomic.so.1 (atomic_thread_fence) on this host")
def test_console_event_idx():
    """VIRTIO_RING_F_EVENT_IDX (offered when the fence exists): the queues
    follow the negotiation, also after a snapshot; a chunk the driver took
    back already (used_event moved past it) raises no interrupt; the driver
    is asked to notify at the next entry once the ring is drained."""
    con = VirtioConsole(lambda data: None)
    d = Driver(con)
    assert con.features & T.VIRTIO_RING_F_EVENT_IDX
    assert d.init(T.VIRTIO_F_VERSION_1 | T.VIRTIO_RING_F_EVENT_IDX)
    assert all(q.event_idx for q in d.dev.queues)
    used_event = d.qbase(1) + 0x800 + 4 + 2 * 8
    avail_event = d.qbase(1) + 0x1000 + 4 + 8 * 8
    a, n = d.buf(b"x" * 64)
    d.submit(1, [(a, n, False)])
    assert d.levels == [True]  # the first used buffer always interrupts
    assert struct.unpack("<H", d.mem.read(avail_event, 2))[0] == 1
    d.mem.write(used_event, struct.pack("<H", 2))  # the driver took entry 0 back: wake me at entry 2
    d.submit(1, [(a, n, False)], head=1)
    assert d.levels == [True]
    d.submit(1, [(a, n, False)], head=2)
    assert d.levels == [True, True] and d.used(1)[0] == 3
    again = Driver(VirtioConsole(lambda data: None))
    again.dev.load_state(d.dev.save_state())
    assert all(q.event_idx for q in again.dev.queues)
    plain = Driver(VirtioConsole(lambda data: None))
    assert plain.init() and not any(q.event_idx for q in plain.dev.queues)


def test_event_idx_state_is_refused_on_a_host_without_the_fence(monkeypatch):
    d = Driver(VirtioConsole(lambda data: None))
    assert d.init(T.VIRTIO_F_VERSION_1 | T.VIRTIO_RING_F_EVENT_IDX)
    state = d.dev.save_state()
    monkeypatch.setattr(virtqueue, "have_fence", lambda: False)
    fresh = Driver(VirtioConsole(lambda data: None))
    with pytest.raises(UsageProblem, match="VIRTIO_RING_F_EVENT_IDX, which needs atomic_thread_fence"):
        fresh.dev.load_state(state)
    assert fresh.dev.status == 0  # nothing taken


def test_rng_fills_buffers_from_the_source():
    calls = []

    def source(n):
        calls.append(n)
        return bytes((i * 7) & 0xFF for i in range(n))
    rng = VirtioRng(source)
    d = Driver(rng)
    assert d.r(T.R_DEVICE_ID) == 4 and d.r(T.R_DEVICE_FEATURES) == 0  # no feature bits below 32
    assert d.init()
    a, _ = d.buf(size=48)
    b, _ = d.buf(size=16)
    d.submit(0, [(a, 48, True), (b, 16, True)])
    idx, elems = d.used(0)
    assert idx == 1 and elems[0] == (0, 64) and calls == [64]
    assert d.mem.read(a, 48) + d.mem.read(b, 16) == source(64)
    assert d.levels == [True] and d.ack() == T.INT_USED_BUFFER and d.levels == [True]
    assert rng.save_state() == {"bytes_given": 64}


def test_rng_caps_a_huge_request_and_refuses_readable_only_chains():
    rng = VirtioRng(lambda n: bytes(n))
    d = Driver(rng)
    assert d.init()
    big = RAM + 0x20000
    d.submit(0, [(big, 0x20000, True)])
    assert d.used(0)[1][0] == (0, CHUNK_MAX)
    r, _ = d.buf(b"guest data")
    d.submit(0, [(r, 10, False)], head=1)  # nothing writable: zero bytes given, no error
    assert d.used(0)[1][1] == (1, 0) and d.dev.error is None


def test_notify_and_resample_paths_of_the_io_thread():
    """notify() is what the I/O thread calls on a kick; level-triggered,
    resample() raises the line again while InterruptStatus is non-zero
    (irqfd level semantics)."""
    d = Driver(VirtioRng(lambda n: bytes(n)), T.TRIGGER_LEVEL)
    assert d.init()
    a, _ = d.buf(size=8)
    d.submit(0, [(a, 8, True)], notify=False)
    assert d.used(0)[0] == 0
    d.dev.notify(0)
    assert d.used(0)[0] == 1 and d.levels == [True]
    d.dev.resample()  # not yet acknowledged: raised again
    assert d.levels == [True, True]
    d.ack()
    d.dev.resample()
    assert d.levels == [True, True, False]
    d.dev.notify(5)  # no such queue: ignored
    d.dev.notify_all()
    assert d.dev.error is None


def test_kernel_queues_raise_the_line_when_their_plane_used_buffers():
    """A vhost plane's call signal (read by the I/O thread) sets the
    used-buffer bit and raises the line; it stays up through the guest's
    EOI (resample) until the driver acks it; nothing before DRIVER_OK."""
    class Vhostish(VirtioRng):
        kernel_queues = True
    d = Driver(Vhostish(), T.TRIGGER_LEVEL)
    d.dev.plane_used()
    assert d.r(T.R_INTERRUPT_STATUS) == 0 and d.levels == []
    assert d.init()
    assert d.r(T.R_INTERRUPT_STATUS) == 0
    d.dev.plane_used()
    d.dev.plane_used()  # a second signal before the ack: the line is already up
    assert d.r(T.R_INTERRUPT_STATUS) == T.INT_USED_BUFFER and d.levels == [True]
    d.dev.resample()  # EOI without an ack: raised again
    assert d.levels == [True, True]
    d.ack()
    d.dev.resample()
    assert d.levels == [True, True, False]


def test_edge_interrupt_status_reads_used_while_driver_ok():
    """Edge-triggered (a vhost plane signals the irqfd unseen by Python): the
    used-buffer bit reads set from DRIVER_OK until a reset, whatever was
    signalled or acknowledged; each used batch is one edge; resample and
    plane signals, which only the level-triggered path has, raise nothing."""
    class Vhostish(VirtioRng):
        kernel_queues = True
    d = Driver(Vhostish())
    assert d.dev.edge and d.r(T.R_INTERRUPT_STATUS) == 0
    assert d.init()
    assert d.r(T.R_INTERRUPT_STATUS) == T.INT_USED_BUFFER and d.levels == []
    assert d.ack() == T.INT_USED_BUFFER and d.r(T.R_INTERRUPT_STATUS) == T.INT_USED_BUFFER
    d.dev.resample()
    assert d.levels == []
    a, _ = d.buf(size=8)
    d.submit(0, [(a, 8, True)], notify=False)
    d.dev.notify(0)
    d.dev.notify(0)  # nothing new: no edge
    assert d.used(0)[0] == 1 and d.levels == [True]
    d.submit(0, [(a, 8, True)], head=1)
    assert d.levels == [True, True]  # one edge per batch, acknowledged or not
    d.w(T.R_STATUS, 0)
    assert d.r(T.R_INTERRUPT_STATUS) == 0 and d.levels == [True, True]


def test_edge_config_change_bit_is_held_until_acknowledged(disk):
    """The configuration-change bit (the error state) is held and raised as
    one edge, and only an ACK with it clears it; an ACK of the used-buffer
    bit alone leaves it."""
    d = Driver(B.VirtioBlk(str(disk)))
    assert d.init()
    hdr = d.buf(struct.pack("<IIQ", B.T_IN, 0, 0))
    d.submit(0, [(hdr[0], hdr[1], False)])  # no status byte: error state
    both = T.INT_USED_BUFFER | T.INT_CONFIG_CHANGE
    assert d.levels == [True] and d.r(T.R_INTERRUPT_STATUS) == both
    d.w(T.R_INTERRUPT_ACK, T.INT_USED_BUFFER)
    assert d.r(T.R_INTERRUPT_STATUS) == both
    assert d.ack() == both and d.r(T.R_INTERRUPT_STATUS) == T.INT_USED_BUFFER
    assert d.levels == [True]


@pytest.mark.parametrize("trigger,flags", [(T.TRIGGER_EDGE, 1), (T.TRIGGER_LEVEL, 4)])
def test_device_tree_names_the_trigger_type(trigger, flags):
    """The interrupt specifier's third cell: IRQ_TYPE_EDGE_RISING (1) or
    IRQ_TYPE_LEVEL_HIGH (4) (bindings/interrupt-controller/arm,gic-v3.yaml)."""
    d = Driver(VirtioRng(lambda n: bytes(n)), trigger)
    prop = dict(d.dev.dt_node().props)["interrupts"]
    assert struct.unpack(">III", prop) == (0, 16, flags)


def test_unknown_trigger_is_a_bug():
    with pytest.raises(ValueError):
        Driver(VirtioRng(lambda n: bytes(n)), "pulse")


# ---- property-based: a driver writing anything to any register --------------------

@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(st.tuples(st.sampled_from(REGS), st.one_of(st.integers(0, 16), st.integers(0, 0xFFFFFFFF),
                                                               st.sampled_from([RAM, RAM + 0x1000, RAM + 0x1800,
                                                                                RAM + 0x2000, 0xF]))),
                    max_size=40),
       junk=st.binary(max_size=512), kind=st.sampled_from(["console", "blk", "rng", "net"]))
def test_any_register_sequence_is_safe(tmp_path_factory, ops, junk, kind):
    class Checked(GuestMemory):
        def read(self, gpa, n):
            assert RAM <= gpa and gpa + n <= RAM + RAM_SIZE
            return super().read(gpa, n)

        def write(self, gpa, data):
            assert RAM <= gpa and gpa + len(data) <= RAM + RAM_SIZE
            return super().write(gpa, data)

    console = kind == "console"
    tap = None
    if kind == "net":  # vhost=off: frames from a fake tap into whatever receive buffers the driver made
        from support.fake_vhost import DgramTap
        tap = DgramTap()
        for _ in range(4):
            tap.peer.send(junk[:100] or b"\0" * 20)
        backend = VirtioNetPython(tap)
    else:
        backend = (VirtioConsole(lambda b: None) if console else VirtioRng() if kind == "rng"
                   else B.VirtioBlk(str(_fuzz_disk(tmp_path_factory))))
    mem = Checked()
    mem.add(RAM, RAM_SIZE)
    mem.write(RAM + 0x1000, junk)  # descriptors / rings made of junk
    mem.write(RAM + 0x1800, junk[::-1])
    dev = T.VirtioMmio(0xA000000, 16, mem, lambda level: None, backend)
    for reg, value in ops:
        dev.write(reg, value.to_bytes(4, "little"))
        if console:
            backend.receive(b"k")
        if tap is not None:
            backend._tap_readable()
    for off in (T.R_STATUS, T.R_INTERRUPT_STATUS, T.R_QUEUE_READY, T.R_CONFIG_GENERATION):
        assert len(dev.read(off, 4)) == 4
    if dev.error is not None:
        assert dev.status & T.DEVICE_NEEDS_RESET
    if tap is not None:
        tap.close()
    mem.close()


_DISK = []


def _fuzz_disk(factory):
    if not _DISK:
        p = factory.mktemp("fuzz") / "disk.img"
        p.write_bytes(bytes(8192))
        _DISK.append(p)
    return _DISK[0]

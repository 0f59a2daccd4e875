"""Device state for snapshots: save_state -> JSON -> load_state into a fresh
device gives the same state, the same guest-visible registers and the same
behaviour afterwards; damaged or mismatching states are refused with one
line. Devices are driven into random states through their registers (and
host input), property-based (hypothesis)."""
import json
import shutil
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from pyvmm.devices import pl011 as P
from pyvmm.devices import virtio_blk as B
from pyvmm.devices import virtio_mmio as T
from pyvmm.devices import virtqueue as vq
from pyvmm.devices.virtio_console import VirtioConsole
from pyvmm.errors import UsageProblem

from support.uart import make_uart
from support.virtio_driver import QSIZE, RAM, RAM_SIZE, REGS, Driver, blk_request
from support import virtqueue_ring as tvq

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))


def json_round_trip(state):
    return json.loads(json.dumps(state))


def refused(fn, match):
    with pytest.raises(UsageProblem, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return info.value


# ---- PL011 ------------------------------------------------------------------------------

UART_OFFSETS = [P.DR, P.RSR_ECR, P.FR, P.ILPR, P.IBRD, P.FBRD, P.LCR_H, P.CR, P.IFLS, P.IMSC, P.RIS, P.MIS,
                P.ICR, P.DMACR]
UART_READABLE = list(range(0, 0x50, 4)) + list(range(P.ID_BASE, P.ID_BASE + 32, 4))
uart_ops = st.lists(st.tuples(
    st.sampled_from(["r", "w", "w", "in", "in"]),
    st.one_of(st.sampled_from(UART_OFFSETS), st.sampled_from([P.DR, P.FR, P.IMSC, P.ICR]),
              st.integers(0, 0x3FF).map(lambda i: 4 * i)),
    st.one_of(st.sampled_from([P.INT_RX | P.INT_RT, P.INT_TX, P.INT_ALL, 0, 0x41]), st.integers(0, 0xFFFFFFFF)),
    st.binary(max_size=6)), max_size=60)


def uart_step(u, op):
    kind, off, value, data = op
    if kind == "r":
        return u.read(off, 4)
    if kind == "w":
        u.write(off, value.to_bytes(4, "little"))
        return None
    return u.receive(data)


def uart_read_all(u):
    # FR and DR reads change state (burst counter, RX queue): both devices get the same reads.
    return [u.read(off, 4) for off in UART_READABLE]


@SETTINGS
@given(open_port=st.booleans(), before=uart_ops, after=uart_ops)
def test_pl011_round_trip(open_port, before, after):
    u1, levels1, out1 = make_uart()
    if open_port:  # as Linux does: input is then taken and interrupts flow
        u1.write(P.IMSC, (P.INT_RX | P.INT_RT | P.INT_TX).to_bytes(4, "little"))
    for op in before:
        uart_step(u1, op)
    state = u1.save_state()
    event(f"level={state['level']} rx={bool(state['rx'])}")
    saved = json_round_trip(state)
    u2, levels2, out2 = make_uart()
    u2.load_state(saved)
    assert u2.save_state() == state
    assert levels2 == ([True] if state["level"] else [])  # raised once, only when high
    n_levels, n_out = len(levels1), len(out1)
    assert uart_read_all(u2) == uart_read_all(u1)
    for op in after:
        assert uart_step(u2, op) == uart_step(u1, op)
    assert out2 == out1[n_out:]
    assert levels2[1 if state["level"] else 0:] == levels1[n_levels:]
    assert u2.save_state() == u1.save_state()


def test_pl011_state_content():
    u, levels, _ = make_uart()
    u.write(P.IMSC, (P.INT_RX | P.INT_RT).to_bytes(4, "little"))
    u.write(P.IBRD, (13).to_bytes(4, "little"))
    u.receive(b"abc")
    for _ in range(3):
        u.write(P.DR, b"x\0\0\0")
    state = u.save_state()
    assert state["regs"]["IBRD"] == 13 and state["regs"]["IMSC"] == P.INT_RX | P.INT_RT
    assert state["level"] is True and state["tx_since_full"] == 3 and state["tx_bytes"] == 3
    assert state["rx"] == "YWJj"  # base64 of b"abc"
    assert json.loads(json.dumps(state)) == state


def _uart_state(**changes):
    u, _, _ = make_uart()
    u.write(P.IMSC, P.INT_RX.to_bytes(4, "little"))
    u.receive(b"hi")
    state = json_round_trip(u.save_state())
    for key, value in changes.items():
        target = state["regs"] if key.startswith("regs.") else state
        key = key[5:] if key.startswith("regs.") else key
        if value is KeyError:
            del target[key]
        else:
            target[key] = value
    return state


@pytest.mark.parametrize("changes,match", [
    ({"ris": "0x30"}, r"'ris' must be an integer"),
    ({"ris": True}, r"'ris' must be an integer"),
    ({"ris": 1 << 20}, r"'ris' must be an integer in 0x0\.\.0x7ff"),
    ({"level": 1}, r"'level' must be true or false"),
    ({"level": False}, r"line level 0 does not match"),
    ({"rx": "not base64!"}, r"'rx' is not valid base64"),
    ({"rx": 12}, r"'rx' must be base64 text"),
    ({"rx": "A" * (4 * (P.RX_QUEUE_MAX // 3 + 2))}, r"more than the 65536"),
    ({"regs.CR": -1}, r"pl011 regs state: 'CR' must be an integer"),
    ({"regs.CR": KeyError}, r"pl011 regs state lacks 'CR'"),
    ({"tx_since_full": KeyError}, r"lacks 'tx_since_full'"),
    ({"extra": 1}, r"unknown fields 'extra'"),
    ({"ris": 0, "level": False}, r"2 received bytes pending but RIS"),
])
def test_pl011_bad_state_is_refused(changes, match):
    state = _uart_state(**changes)
    u, levels, _ = make_uart()
    before = u.save_state()
    refused(lambda: u.load_state(state), match)
    assert u.save_state() == before and levels == []  # nothing taken
    refused(lambda: u.load_state([1, 2]), "not a JSON object")


# ---- virtqueue ---------------------------------------------------------------------------

VQ_MAX = 16
# Mostly well-formed descriptors (a chain continues with the next entry), some broken ones.
vq_desc = st.tuples(st.sampled_from([0, 0, vq.VIRTQ_DESC_F_WRITE, vq.VIRTQ_DESC_F_WRITE, vq.VIRTQ_DESC_F_NEXT,
                                     vq.VIRTQ_DESC_F_NEXT | vq.VIRTQ_DESC_F_WRITE]),
                    st.one_of(st.none(), st.none(), st.none(), st.integers(0, VQ_MAX - 1)), st.integers(1, 0x40))
vq_ops = st.lists(st.one_of(st.tuples(st.just("publish"), st.integers(0, 63)),  # a head below the size
                            st.tuples(st.just("publish"), st.integers(64, 64 + VQ_MAX + 2)),  # any head
                            st.tuples(st.just("serve"), st.integers(0, 0x100)),
                            st.tuples(st.just("pending"), st.just(0))), max_size=30)


def vq_step(q, m, op):
    """One driver or device step; the result (or the error) is what a guest could observe."""
    kind, value = op
    try:
        if kind == "publish":
            idx = struct.unpack("<H", m.mem.read(tvq.AVAIL + 2, 2))[0]
            slot = idx % max(q.size, 1) if q.size <= VQ_MAX else 0
            head = value % q.size if value < 64 and 1 <= q.size <= VQ_MAX else value - 64
            m.poke(tvq.AVAIL + 4 + 2 * slot, struct.pack("<H", head & 0xFFFF))
            m.poke(tvq.AVAIL + 2, struct.pack("<H", (idx + 1) & 0xFFFF))
            return None
        if kind == "pending":
            return q.pending() if q.ready else None
        chain = q.pop()
        if chain is None:
            return None
        written = value % (chain.writable_len + 1)
        q.push(chain.head, written)  # devices return every chain before the exit ends
        return (chain.head, chain.readable, chain.writable, written, q.wants_interrupt())
    except vq.VirtqueueError as e:
        return str(e)


def _clone(m):
    m2 = tvq.CheckedMemory()
    m2.poke(tvq.RAM, m.mem.read(tvq.RAM, tvq.RAM_SIZE))
    return m2


@SETTINGS
@given(size=st.sampled_from([1, 2, 4, 8, 16, 2, 4, 8, 16, 3, 0, 32, 0xFFFFFFFF]),
       rings=st.sampled_from([(tvq.DESC, tvq.AVAIL, tvq.USED)] * 3 + [None]).flatmap(
           lambda r: st.just(r) if r else st.tuples(*[st.integers(0, (1 << 64) - 1)] * 3)),
       descs=st.lists(vq_desc, min_size=VQ_MAX, max_size=VQ_MAX), start_idx=st.integers(0, 0xFFFF),
       before=vq_ops, after=vq_ops)
def test_virtqueue_round_trip(size, rings, descs, start_idx, before, after):
    m1 = tvq.CheckedMemory()
    m1.poke(tvq.DESC, b"".join(tvq.desc(tvq.DATA + 0x40 * i, n, f, (i + 1) % VQ_MAX if nx is None else nx)
                               for i, (f, nx, n) in enumerate(descs)))
    m1.poke(tvq.AVAIL + 2, struct.pack("<H", start_idx))
    q1 = vq.Virtqueue(m1, max_size=VQ_MAX)
    q1.size, (q1.desc_addr, q1.avail_addr, q1.used_addr) = size, rings
    q1.last_avail = q1.used_idx = start_idx
    try:
        q1.activate()
    except vq.VirtqueueError:
        assert not q1.ready
    for op in before:
        vq_step(q1, m1, op)
    state = q1.save_state()
    event(f"ready={state['ready']} served={state['last_avail'] != start_idx} "
          f"pending={state['ready'] and vq_step(q1, m1, ('pending', 0))}")
    m2 = _clone(m1)
    q2 = vq.Virtqueue(m2, max_size=VQ_MAX)
    q2.load_state(json_round_trip(state))
    assert q2.save_state() == state
    for op in after:
        assert vq_step(q2, m2, op) == vq_step(q1, m1, op)
    assert m2.mem.read(tvq.RAM, tvq.RAM_SIZE) == m1.mem.read(tvq.RAM, tvq.RAM_SIZE)
    assert q2.save_state() == q1.save_state()
    m1.mem.close()
    m2.mem.close()


def _ready_state(**changes):
    q = tvq.queue(tvq.CheckedMemory())
    state = q.save_state()
    state.update(changes)
    return state


@pytest.mark.parametrize("changes,match", [
    ({"desc_addr": 0x1000}, r"descriptor table at 0x1000\+0x80 is outside guest RAM"),
    ({"used_addr": tvq.RAM + tvq.RAM_SIZE - 8}, r"used ring .* is outside guest RAM"),
    ({"avail_addr": (1 << 64) - 2}, r"available ring .* is outside guest RAM"),
    ({"desc_addr": tvq.DESC + 8}, r"not 16-byte aligned"),
    ({"size": 3}, r"queue size 3 is not a power of two"),
    ({"size": 32}, r"queue size 32 is not a power of two in 1\.\.16"),
    ({"max_size": 256}, r"maximum size 256 is not this queue's 16"),
    ({"used_idx": 0x10000}, r"'used_idx' must be an integer in 0x0\.\.0xffff"),
    ({"ready": "yes"}, r"'ready' must be true or false"),
    ({"desc_addr": 1 << 64}, r"'desc_addr' must be an integer"),
    ({"size": None}, r"'size' must be an integer"),
])
def test_virtqueue_bad_state_is_refused(changes, match):
    q = vq.Virtqueue(tvq.CheckedMemory(), max_size=16)
    before = q.save_state()
    e = refused(lambda: q.load_state(_ready_state(**changes)), match)
    assert str(e).startswith("virtqueue state")
    assert q.save_state() == before


def test_virtqueue_not_ready_keeps_whatever_the_driver_wrote():
    # Set-up registers of a queue that is not ready are never used: any value round-trips.
    state = _ready_state(ready=False, size=0xFFFFFFFF, desc_addr=(1 << 64) - 1, avail_addr=3, used_addr=0)
    q = vq.Virtqueue(tvq.CheckedMemory(), max_size=16)
    q.load_state(state)
    assert q.save_state() == state and q.pop() is None


# ---- virtio-mmio with its backends -----------------------------------------------------------

def mmio_ops(console):
    submit_kinds = [0, 1] if console else [B.T_IN, B.T_OUT, B.T_FLUSH, B.T_GET_ID, 99]
    values = st.one_of(st.integers(0, 16), st.integers(0, 0xFFFFFFFF),
                       st.sampled_from([RAM, RAM + 0x1000, RAM + 0x1800, RAM + 0x2000, 0xF]))
    submit = st.tuples(st.just("submit"), st.tuples(st.sampled_from(submit_kinds), st.integers(0, 31),
                                                    st.binary(min_size=1, max_size=40)))
    op = st.one_of(
        st.tuples(st.just("init"), st.sampled_from([T.VIRTIO_F_VERSION_1, T.VIRTIO_F_VERSION_1 | (1 << 40), 0])),
        st.tuples(st.just("reg"), st.tuples(st.sampled_from(REGS), values)),
        submit, submit, submit,
        st.tuples(st.just("bad"), st.sampled_from([0, 1])),
        st.tuples(st.just("ack"), st.none()),
        st.tuples(st.just("in"), st.binary(max_size=40)))
    return st.lists(op, max_size=25)


def mmio_step(d, op, console):
    kind, arg = op
    if kind == "init":
        return d.init(arg)
    if kind == "reg":
        d.w(*arg)
        return None
    if kind == "ack":
        return d.ack()
    if kind == "in":
        return d.dev.backend.receive(arg) if console else None
    if kind == "bad":  # a buffer running past the end of guest RAM: the device enters its error state
        if arg not in d.avail_idx:
            return None
        d.submit(arg, [(RAM + RAM_SIZE - 8, 16, False)], head=d.avail_idx[arg] % QSIZE)
        return d.used(arg)
    what, sector, data = arg
    if console:
        if what not in d.avail_idx:
            return None
        if what == 1:
            a, n = d.buf(data)
            d.submit(1, [(a, n, False)], head=d.avail_idx[1] % QSIZE)
        else:
            a, n = d.buf(size=len(data))
            d.submit(0, [(a, n, True)], head=d.avail_idx[0] % QSIZE)
        return d.used(what)
    if 0 not in d.avail_idx or d.next_data > RAM + RAM_SIZE - 0x1000:
        return None
    rd, status = blk_request(d, what, sector, data=(data * 512)[:512] if what == B.T_OUT else b"",
                             read_len=512 if what == B.T_IN else (20 if what == B.T_GET_ID else 0))
    return d.used(0), d.mem.read(status[0], 1), d.mem.read(rd[0], rd[1]) if rd else None


def mmio_read_all(d):
    """Every register, the config space, and every queue's registers (through
    QUEUE_SEL, put back afterwards)."""
    out = [d.dev.read(off, 4) for off in range(0, T.CONFIG, 4)]
    out += [d.dev.read(off, 4) for off in range(T.CONFIG, T.CONFIG + 0x40, 4)]
    sel = d.dev.queue_sel
    for q in range(len(d.dev.queues) + 1):
        d.w(T.R_QUEUE_SEL, q)
        out.append([d.r(off) for off in (T.R_QUEUE_NUM_MAX, T.R_QUEUE_NUM, T.R_QUEUE_READY, T.R_QUEUE_DESC_LOW,
                                         T.R_QUEUE_DESC_HIGH, T.R_QUEUE_DRIVER_LOW, T.R_QUEUE_DRIVER_HIGH,
                                         T.R_QUEUE_DEVICE_LOW, T.R_QUEUE_DEVICE_HIGH)])
    d.w(T.R_QUEUE_SEL, sel)
    return out


class _Disks:
    """Two copies of one disk image with the same file name (so the same
    GET_ID serial), in different directories."""

    def __init__(self, factory):
        self.a = factory.mktemp("a") / "disk.img"
        self.b = factory.mktemp("b") / "disk.img"

    def fresh(self):
        self.a.write_bytes(bytes(range(256)) * 64)  # 32 sectors


def _pair(console, disks=None, trigger=T.TRIGGER_EDGE):
    out1, out2 = [], []
    if console:
        return (Driver(VirtioConsole(out1.append), trigger), out1,
                lambda: (Driver(VirtioConsole(out2.append), trigger), out2))
    disks.fresh()

    def second():
        shutil.copyfile(disks.a, disks.b)
        return Driver(B.VirtioBlk(str(disks.b)), trigger), out2
    return Driver(B.VirtioBlk(str(disks.a)), trigger), out1, second


def here(state):
    """The state without the disk's directory (the restored device opens a copy)."""
    state = json_round_trip(state)
    if "path" in state["backend"]:
        state["backend"]["path"] = state["backend"]["path"].rsplit("/", 1)[-1]
    return state


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    return _Disks(tmp_path_factory)


@SETTINGS
@given(data=st.data(), console=st.booleans(), setup=st.sampled_from([True, True, False]),
       trigger=st.sampled_from(T.TRIGGERS))
def test_virtio_mmio_round_trip(disks, data, console, setup, trigger):
    d1, out1, second = _pair(console, disks, trigger)
    if setup:
        d1.init()  # often start from a working driver; the random ops may then break it
    for op in data.draw(mmio_ops(console), "before"):
        mmio_step(d1, op, console)
    state = d1.dev.save_state()
    event(f"driver_ok={bool(state['status'] & T.DRIVER_OK)} error={state['error'] is not None} "
          f"level={state['level']} ready={sum(q['ready'] for q in state['queues'])}")
    saved = json_round_trip(state)
    d2, out2 = second()
    # The guest's RAM and the test driver's own bookkeeping (the guest's) come along.
    d2.mem.write(RAM, d1.mem.read(RAM, RAM_SIZE))
    d2.next_data, d2.avail_idx = d1.next_data, dict(d1.avail_idx)
    d2.dev.load_state(saved)
    assert here(d2.dev.save_state()) == here(state)
    assert d2.levels == ([True] if state["level"] else [])
    n_levels, n_out = len(d1.levels), len(out1)
    assert mmio_read_all(d2) == mmio_read_all(d1)
    for op in data.draw(mmio_ops(console), "after"):
        assert mmio_step(d2, op, console) == mmio_step(d1, op, console)
    assert out2 == out1[n_out:]
    assert d2.levels[1 if state["level"] else 0:] == d1.levels[n_levels:]
    assert d2.mem.read(RAM, RAM_SIZE) == d1.mem.read(RAM, RAM_SIZE)
    assert mmio_read_all(d2) == mmio_read_all(d1)
    assert here(d2.dev.save_state()) == here(d1.dev.save_state())
    if not console:
        assert disks.b.read_bytes() == disks.a.read_bytes()
        d1.dev.backend.close()
        d2.dev.backend.close()
    d1.mem.close()
    d2.mem.close()


def test_virtio_state_content_and_pending_input(disk_pair):
    out = []
    con = VirtioConsole(out.append)
    d = Driver(con)
    assert d.init()
    assert con.receive(b"typed before the guest posted buffers") > 0
    state = json_round_trip(d.dev.save_state())
    assert state["device_id"] == 3 and state["status"] & T.DRIVER_OK and state["error"] is None
    assert [q["ready"] for q in state["queues"]] == [True, True]
    assert state["backend"]["pending"]  # base64 of the held input
    out2 = []
    con2 = VirtioConsole(out2.append)
    d2 = Driver(con2)
    d2.mem.write(RAM, d.mem.read(RAM, RAM_SIZE))
    d2.avail_idx, d2.next_data = dict(d.avail_idx), d.next_data
    d2.dev.load_state(state)
    rx = d2.buf(size=64)
    d2.submit(0, [(rx[0], rx[1], True)])
    assert d2.mem.read(rx[0], 5) == b"typed"  # the held input reaches the restored guest

    blk_state = json_round_trip(Driver(B.VirtioBlk(str(disk_pair[0]))).dev.save_state())
    assert blk_state["backend"] == {"path": str(disk_pair[0]), "readonly": False, "size": 16384, "requests": 0}


@pytest.fixture
def disk_pair(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for p in (a / "disk.img", b / "disk.img"):
        p.write_bytes(bytes(16384))
    return a / "disk.img", b / "disk.img"


def test_virtio_wrong_device_is_refused(disk_pair):
    console_state = json_round_trip(Driver(VirtioConsole(lambda b: None)).dev.save_state())
    d = Driver(B.VirtioBlk(str(disk_pair[0])))
    refused(lambda: d.dev.load_state(console_state), r"saved from a device with id 3, this one is device 2")
    blk_state = json_round_trip(d.dev.save_state())
    refused(lambda: Driver(VirtioConsole(lambda b: None)).dev.load_state(blk_state),
            r"device with id 2, this one is device 3")


def test_virtio_ring_outside_ram_is_refused_and_nothing_changes():
    d = Driver(VirtioConsole(lambda b: None))
    assert d.init()
    d.dev.backend.receive(b"x")
    state = json_round_trip(d.dev.save_state())
    state["queues"][1]["used_addr"] = RAM + RAM_SIZE  # the ring just past guest RAM
    fresh = Driver(VirtioConsole(lambda b: None))
    before = fresh.dev.save_state()
    refused(lambda: fresh.dev.load_state(state), r"virtio-mmio@0xa000000 queue 1 state: ready queue refused: "
                                                  r"used ring at 0x40040000\+0x46 is outside guest RAM")
    assert fresh.dev.save_state() == before and fresh.levels == []


def _console_state(kind=T.TRIGGER_EDGE, **changes):
    d = Driver(VirtioConsole(lambda b: None), kind)
    assert d.init()
    state = json_round_trip(d.dev.save_state())
    for key, value in changes.items():
        if key.startswith("backend."):
            state["backend"][key[8:]] = value
        else:
            state[key] = value
    return state


@pytest.mark.parametrize("changes,match", [
    ({"status": "ok"}, r"'status' must be an integer"),
    ({"interrupt_status": 4}, r"'interrupt_status' must be an integer in 0x0\.\.0x3"),
    ({"level": True}, r"line level 1 and interrupt status 0x0: an edge-triggered device holds neither"),
    ({"interrupt_status": 1}, r"line level 0 and interrupt status 0x1: an edge-triggered device holds neither"),
    ({"trigger": "level"}, r"interrupt saved level-triggered, this device's is edge-triggered"),
    ({"trigger": "pulse"}, r"virtio-mmio state: 'trigger' must be one of 'edge', 'level', not 'pulse'"),
    ({"trigger": None}, r"'trigger' must be a string"),
    ({"version": 3}, r"virtio-mmio@0xa000000 state is version 3, this pyvmm reads up to 2"),
    ({"version": 1}, r"'trigger' is no field of version 1"),
    ({"error": "broken"}, r"error 'broken' does not match status"),
    ({"error": 5}, r"'error' must be a string or null"),
    ({"queues": [{}]}, r"'queues' has 1 entries, expected 2"),
    ({"queues": "none"}, r"'queues' must be a list"),
    ({"backend": []}, r"'backend' must be a JSON object"),
    ({"backend.pending": "%%%"}, r"virtio-console state: 'pending' is not valid base64"),
    ({"backend.extra": 1}, r"virtio-console state has unknown fields 'extra'"),
    ({"device_id": None}, r"'device_id' must be an integer"),
])
def test_virtio_bad_state_is_refused(changes, match):
    d = Driver(VirtioConsole(lambda b: None))
    before = d.dev.save_state()
    refused(lambda: d.dev.load_state(_console_state(**changes)), match)
    assert d.dev.save_state() == before and d.levels == []


@pytest.mark.parametrize("changes,match", [
    ({"level": True}, r"line level 1 does not match interrupt status 0x0"),
    ({"interrupt_status": 1}, r"line level 0 does not match interrupt status 0x1"),
    ({"trigger": "edge"}, r"interrupt saved edge-triggered, this device's is level-triggered"),
])
def test_virtio_bad_level_state_is_refused(changes, match):
    d = Driver(VirtioConsole(lambda b: None), T.TRIGGER_LEVEL)
    before = d.dev.save_state()
    refused(lambda: d.dev.load_state(_console_state(T.TRIGGER_LEVEL, **changes)), match)
    assert d.dev.save_state() == before and d.levels == []


def test_version_1_state_is_level_triggered():
    """A transport state from before edge-triggered interrupts (no
    "version", no "trigger") is level-triggered: a level transport takes it,
    an edge one refuses it naming both; a version-2 state without its
    trigger is refused."""
    state = _console_state(T.TRIGGER_LEVEL)
    assert state["version"] == 2 and state["trigger"] == "level"
    del state["version"], state["trigger"]
    assert T.saved_trigger(state) == T.TRIGGER_LEVEL
    d = Driver(VirtioConsole(lambda b: None), T.TRIGGER_LEVEL)
    d.dev.load_state(state)
    assert d.dev.save_state()["trigger"] == "level"
    refused(lambda: Driver(VirtioConsole(lambda b: None)).dev.load_state(state),
            r"virtio-mmio@0xa000000 state: interrupt saved level-triggered, this device's is edge-triggered")
    edge = _console_state()
    assert T.saved_trigger(edge) == T.TRIGGER_EDGE
    del edge["trigger"]
    refused(lambda: T.saved_trigger(edge), r"virtio-mmio state: version 2 lacks 'trigger'")
    refused(lambda: T.saved_trigger([]), r"virtio-mmio state is not a JSON object")


def test_virtio_blk_disk_checks(disk_pair, tmp_path):
    a, b = disk_pair
    d = Driver(B.VirtioBlk(str(a)))
    assert d.init()
    blk_request(d, B.T_GET_ID, 0, read_len=20)
    state = json_round_trip(d.dev.save_state())
    assert state["backend"]["requests"] == 1
    d2 = Driver(B.VirtioBlk(str(b)))  # same name, other directory: accepted
    d2.mem.write(RAM, d.mem.read(RAM, RAM_SIZE))
    d2.dev.load_state(state)
    assert d2.dev.save_state()["backend"]["requests"] == 1
    with open(b, "ab") as f:
        f.write(bytes(512))
    refused(lambda: Driver(B.VirtioBlk(str(b))).dev.load_state(state),
            r"virtio-blk state: disk .* is 16896 bytes now, 16384 bytes when the snapshot was taken")
    refused(lambda: Driver(B.VirtioBlk(str(a), readonly=True)).dev.load_state(state),
            r"was attached read-write, now read-only")
    other = tmp_path / "other.img"
    shutil.copyfile(a, other)
    # Another file (the user's --disk choice on restore): the guest keeps the serial it saw.
    d3 = Driver(B.VirtioBlk(str(other)))
    d3.dev.load_state(state)
    assert d3.dev.backend.serial == b"disk.img"


def test_edge_device_raises_one_edge_after_restore():
    """Edge-triggered: a load raises nothing (no line is held; the vGIC's
    saved pending state is the interrupt's); after_restore then raises one
    edge for a running device, since a plane's signal KVM had not injected
    yet when the machine was saved is in neither."""
    d = Driver(VirtioConsole(lambda b: None))
    assert d.init()
    a, n = d.buf(b"out")
    d.submit(1, [(a, n, False)])
    assert d.levels == [True]
    state = json_round_trip(d.dev.save_state())
    assert state["level"] is False and state["interrupt_status"] == 0
    d2 = Driver(VirtioConsole(lambda b: None))
    d2.mem.write(RAM, d.mem.read(RAM, RAM_SIZE))
    d2.dev.load_state(state)
    assert d2.levels == []
    d2.dev.after_restore()
    assert d2.levels == [True] and d2.r(T.R_INTERRUPT_STATUS) == T.INT_USED_BUFFER
    d3 = Driver(VirtioConsole(lambda b: None))  # never started: nothing to raise
    d3.dev.load_state(json_round_trip(d3.dev.save_state()))
    d3.dev.after_restore()
    assert d3.levels == []


def test_high_line_is_raised_once_on_load():
    d = Driver(VirtioConsole(lambda b: None), T.TRIGGER_LEVEL)
    assert d.init()
    a, n = d.buf(b"out")
    d.submit(1, [(a, n, False)])
    assert d.levels == [True]
    state = json_round_trip(d.dev.save_state())
    d2 = Driver(VirtioConsole(lambda b: None), T.TRIGGER_LEVEL)
    d2.dev.load_state(state)
    assert d2.levels == [True]
    assert d2.ack() == T.INT_USED_BUFFER and d2.levels == [True, False]

"""Split virtqueue, device side: a malicious driver (descriptors outside RAM,
loops, huge lengths, bad indices, nested indirect tables) gets VirtqueueError,
never an access outside guest RAM. Property-based (hypothesis)."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvmm.devices import virtqueue as vq
from pyvmm.memory import GuestMemoryError
from support.virtqueue_ring import (AVAIL, DATA, DESC, RAM, RAM_SIZE, USED, CheckedMemory, desc, publish,
                                    queue)

def test_well_formed_chain_round_trip():
    m = CheckedMemory()
    q = queue(m)
    m.poke(DESC, desc(DATA, 16, vq.VIRTQ_DESC_F_NEXT, 1) + desc(DATA + 16, 100, vq.VIRTQ_DESC_F_WRITE))
    publish(m, [0])
    c = q.pop()
    assert c.head == 0 and c.readable == [(DATA, 16)] and c.writable == [(DATA + 16, 100)]
    assert q.pop() is None
    q.push(c.head, 7)
    assert struct.unpack("<HHII", m.mem.read(USED, 12)) == (0, 1, 0, 7)


def test_indirect_table():
    m = CheckedMemory()
    q = queue(m)
    table = RAM + 0x3000
    m.poke(table, desc(DATA, 8, vq.VIRTQ_DESC_F_NEXT, 1) + desc(DATA + 8, 8, vq.VIRTQ_DESC_F_WRITE))
    m.poke(DESC + 16 * 3, desc(table, 32, vq.VIRTQ_DESC_F_INDIRECT))
    publish(m, [3])
    c = q.pop()
    assert c.readable == [(DATA, 8)] and c.writable == [(DATA + 8, 8)]


@pytest.mark.parametrize("descs,head,match", [
    ([desc(DATA, 8, vq.VIRTQ_DESC_F_NEXT, 0)], 0, "loop"),
    ([desc(DATA, 8, vq.VIRTQ_DESC_F_NEXT, 1), desc(DATA, 8, vq.VIRTQ_DESC_F_NEXT, 0)], 0, "loop"),
    ([desc(0x1000, 8)], 0, "outside guest RAM"),
    ([desc(RAM + RAM_SIZE - 4, 8)], 0, "outside guest RAM"),
    ([desc(DATA, 0xFFFFFFFF)], 0, "outside guest RAM"),
    ([desc(DATA, 8, vq.VIRTQ_DESC_F_NEXT, 200)], 0, "not below the table size"),
    ([desc(DATA, 8)], 9, "not below the queue size"),
    ([desc(DATA, 8, vq.VIRTQ_DESC_F_WRITE | vq.VIRTQ_DESC_F_NEXT, 1), desc(DATA, 8)], 0, "readable descriptor after"),
    ([desc(DATA, 20, vq.VIRTQ_DESC_F_INDIRECT)], 0, "multiple of 16"),
    ([desc(DATA, 16, vq.VIRTQ_DESC_F_INDIRECT | vq.VIRTQ_DESC_F_NEXT)], 0, "NEXT"),
    ([desc(0xFFFFFFFFFFFFF000, 32, vq.VIRTQ_DESC_F_INDIRECT)], 0, "outside guest RAM"),
])
def test_malicious_chains_are_refused(descs, head, match):
    m = CheckedMemory()
    q = queue(m)
    m.poke(DESC, b"".join(descs))
    publish(m, [head])
    with pytest.raises(vq.VirtqueueError, match=match):
        q.pop()


def test_nested_indirect_refused():
    m = CheckedMemory()
    q = queue(m)
    t1, t2 = RAM + 0x3000, RAM + 0x3100
    m.poke(t1, desc(t2, 16, vq.VIRTQ_DESC_F_INDIRECT))
    m.poke(DESC, desc(t1, 16, vq.VIRTQ_DESC_F_INDIRECT))
    publish(m, [0])
    with pytest.raises(vq.VirtqueueError, match="nested"):
        q.pop()


def test_avail_index_jump_refused():
    m = CheckedMemory()
    q = queue(m)
    m.poke(AVAIL + 2, struct.pack("<H", 500))
    with pytest.raises(vq.VirtqueueError, match="available index moved"):
        q.pop()


def test_huge_chain_refused(monkeypatch):
    monkeypatch.setattr(vq, "MAX_CHAIN_BYTES", 0x100)
    m = CheckedMemory()
    q = queue(m)
    m.poke(DESC, desc(DATA, 0x80, vq.VIRTQ_DESC_F_NEXT, 1) + desc(DATA, 0x81))
    publish(m, [0])
    with pytest.raises(vq.VirtqueueError, match="more than"):
        q.pop()


@pytest.mark.parametrize("size,d,a,u,match", [
    (3, DESC, AVAIL, USED, "power of two"), (0, DESC, AVAIL, USED, "power of two"),
    (32, DESC, AVAIL, USED, "power of two"), (8, DESC + 8, AVAIL, USED, "aligned"),
    (8, DESC, AVAIL + 1, USED, "aligned"), (8, DESC, AVAIL, USED + 2, "aligned"),
    (8, 0, AVAIL, USED, "outside"), (8, DESC, RAM + RAM_SIZE - 2, USED, "outside"),
    (8, DESC, AVAIL, 1 << 63, "outside"),
])
def test_bad_ring_geometry_refused(size, d, a, u, match):
    q = vq.Virtqueue(CheckedMemory(), max_size=16)
    q.size, q.desc_addr, q.avail_addr, q.used_addr = size, d, a, u
    with pytest.raises(vq.VirtqueueError, match=match):
        q.activate()
    assert not q.ready


def test_segments_helpers():
    m = CheckedMemory()
    m.poke(DATA, b"abcdefgh")
    segs = [(DATA, 3), (DATA + 3, 5)]
    assert vq.read_segments(m, segs) == b"abcdefgh"
    assert vq.read_segments(m, segs, 2, 4) == b"cdef"
    assert vq.write_segments(m, segs, b"XYZ", 2) == 3
    assert m.mem.read(DATA, 8) == b"abXYZfgh"
    assert vq.write_segments(m, segs, b"0123456789") == 8


# ---- VIRTIO_RING_F_EVENT_IDX -------------------------------------------------------

HAVE_FENCE = vq.have_fence()  # loads it: queues get event_idx only with one
needs_fence = pytest.mark.skipif(not HAVE_FENCE, reason="no libatomic.so.1 (atomic_thread_fence) on this host")
AVAIL_EVENT = USED + 4 + 8 * 8  # after the used ring of a size-8 queue
USED_EVENT = AVAIL + 4 + 2 * 8  # after the available ring


def _u16(m, addr):
    return struct.unpack("<H", m.mem.read(addr, 2))[0]


@needs_fence
def test_event_idx_publishes_avail_event_when_the_ring_is_drained():
    m = CheckedMemory()
    q = queue(m)
    q.event_idx = True
    m.poke(DESC, desc(DATA, 16) + desc(DATA, 16))
    publish(m, [0, 1])
    assert q.pop().head == 0 and _u16(m, AVAIL_EVENT) == 0  # not drained yet: nothing published
    assert q.pop().head == 1 and q.pop() is None
    assert _u16(m, AVAIL_EVENT) == 2  # notify me when entry 2 is made available


@needs_fence
def test_event_idx_entry_made_available_while_publishing_is_not_missed():
    """The driver makes an entry available just as the queue writes
    avail_event (it saw the old value, so it will not notify): the look
    after the fence finds the entry."""
    class Racing(CheckedMemory):
        def write(self, gpa, data):
            super().write(gpa, data)
            if gpa == AVAIL_EVENT:
                publish(self, [1], start=1)
    m = Racing()
    q = queue(m)
    q.event_idx = True
    m.poke(DESC, desc(DATA, 16) + desc(DATA, 16))
    publish(m, [0])
    assert q.pop().head == 0
    c = q.pop()
    assert c is not None and c.head == 1
    assert q.pop() is None and _u16(m, AVAIL_EVENT) == 2


@needs_fence
def test_event_idx_interrupts_only_when_used_event_is_crossed():
    m = CheckedMemory()
    q = queue(m)
    q.event_idx = True
    m.poke(DESC, desc(DATA, 16) * 4)
    publish(m, [0, 1, 2, 3])
    m.poke(AVAIL, struct.pack("<H", vq.VIRTQ_AVAIL_F_NO_INTERRUPT))  # ignored with event_idx
    q.push(q.pop().head, 0)
    assert q.wants_interrupt()  # the first one always (nothing known about earlier ones)
    assert not q.wants_interrupt()  # nothing new since
    m.poke(USED_EVENT, struct.pack("<H", 2))  # the driver already took entry 1 back: interrupt at 2
    q.push(q.pop().head, 0)
    assert not q.wants_interrupt()  # entry 1 (used index 2) did not cross used_event 2
    q.push(q.pop().head, 0)
    q.push(q.pop().head, 0)
    assert q.wants_interrupt()  # entries 2 and 3: entry 2 is used_event's
    q.event_idx = False
    assert not q.wants_interrupt()  # without it the flag counts again


# ---- property-based: anything a driver can put in memory --------------------------

def addr_strategy():
    return st.one_of(
        st.integers(RAM, RAM + RAM_SIZE - 1),                       # inside RAM
        st.integers(RAM + RAM_SIZE - 64, RAM + RAM_SIZE + 64),      # straddling the end
        st.integers(0, RAM + 64),                                    # below / straddling the start
        st.integers(0, (1 << 64) - 1),                               # anywhere
        st.sampled_from([(1 << 64) - 1, (1 << 64) - 16, 1 << 63]))  # wrap-around bait


length_strategy = st.one_of(st.integers(0, 256), st.integers(0, RAM_SIZE + 16),
                            st.sampled_from([0xFFFFFFFF, 0x80000000, RAM_SIZE]))
desc_strategy = st.tuples(addr_strategy(), length_strategy, st.integers(0, 7), st.integers(0, 20))


_SHARED = CheckedMemory()


@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(size=st.sampled_from([1, 2, 4, 8, 16, 3, 0, 32]),
       ring_ok=st.booleans(),
       rings=st.tuples(addr_strategy(), addr_strategy(), addr_strategy()),
       descs=st.lists(desc_strategy, min_size=0, max_size=16),
       indirect=st.lists(desc_strategy, max_size=8),
       avail_idx=st.integers(0, 0xFFFF),
       ring=st.lists(st.integers(0, 0xFFFF) | st.integers(0, 20), max_size=16),
       writes=st.lists(st.integers(0, 1 << 32), max_size=16),
       event_idx=st.booleans(), used_event=st.integers(0, 0xFFFF))
def test_any_driver_memory_is_handled_safely(size, ring_ok, rings, descs, indirect, avail_idx, ring, writes,
                                             event_idx, used_event):
    m = _SHARED
    m.poke(RAM, bytes(0x4000))
    table = RAM + 0x3000
    # The indirect table sits at a known place so some descriptors can point at it.
    m.poke(table, b"".join(desc(*d) for d in indirect))
    body = []
    for i, (a, n, f, nx) in enumerate(descs):
        if f & vq.VIRTQ_DESC_F_INDIRECT and i % 2 == 0:
            a, n = table, 16 * max(len(indirect), 1)
        body.append(desc(a, n, f, nx))
    m.poke(DESC, b"".join(body))
    for i, h in enumerate(ring[:16]):
        m.poke(AVAIL + 4 + 2 * i, struct.pack("<H", h))
    m.poke(AVAIL + 2, struct.pack("<H", avail_idx))
    if 0 < size <= 16:
        m.poke(AVAIL + 4 + 2 * size, struct.pack("<H", used_event))
    q = vq.Virtqueue(m, max_size=16)
    q.event_idx = event_idx and HAVE_FENCE
    q.size = size
    q.desc_addr, q.avail_addr, q.used_addr = (DESC, AVAIL, USED) if ring_ok else rings
    try:
        q.activate()
    except vq.VirtqueueError:
        assert not q.ready
        return
    popped = 0
    try:
        for w in writes + [0] * 20:
            c = q.pop()
            if c is None:
                break
            popped += 1
            for a, n in c.readable + c.writable:
                assert RAM <= a and a + n <= RAM + RAM_SIZE
            assert c.readable_len + c.writable_len <= vq.MAX_CHAIN_BYTES
            assert len(c.readable) + len(c.writable) <= max(q.size, 16 * 2)
            q.push(c.head, w % (c.writable_len + 1))
            if w & 1:
                q.wants_interrupt()
    except (vq.VirtqueueError, GuestMemoryError):
        pass
    assert popped <= q.size


def test_guest_ram_the_host_cannot_map_is_a_host_error():
    """Issue 14 #5: 32 GiB (here 64 TiB) of RAM from a snapshot or -m was an internal error."""
    from pyvmm.errors import HostUnsupported
    from pyvmm.memory import GuestMemory

    with pytest.raises(HostUnsupported, match=r"^cannot map 67108864 MiB of guest RAM: Cannot allocate memory"):
        GuestMemory().add(0x40000000, 1 << 46)

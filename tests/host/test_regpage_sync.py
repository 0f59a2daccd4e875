"""The virtio-mmio register page (pyvmm/devices/virtio_regpage.py) always
holds what a register read returns: pure logic on a bytearray standing in
for the read-only memory slot (the KVM side is tests/kvm/test_virtio_regpage.py)."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvmm.devices import virtio_mmio as T
from pyvmm.devices import virtio_regpage as P
from pyvmm.memory import GuestMemory

RAM, RAM_SIZE = 0x4000_0000, 1 << 20


class ConfigBackend(T.VirtioBackend):
    """Two queues, 64-bit features and 12 bytes of configuration space
    whose value the test can change (as a link-status change would)."""

    device_id = 7
    features = T.VIRTIO_F_VERSION_1 | (1 << 3) | (1 << 40)
    num_queues = 2
    queue_max = 64

    def __init__(self):
        self.config = bytearray(b"config-bytes")

    def config_read(self, offset, length):
        return bytes(self.config[offset:offset + length]).ljust(length, b"\0")

    def config_write(self, offset, data):
        end = min(offset + len(data), len(self.config))
        if 0 <= offset < end:
            self.config[offset:end] = data[:end - offset]


def make(trigger=T.TRIGGER_EDGE):
    mem = GuestMemory()
    mem.add(RAM, RAM_SIZE)
    raised = []
    page = P.RegPage(bytearray(T.SIZE))
    box = {}

    def raise_irq(level):
        # The guest must find the interrupt's cause in the page when it arrives.
        t = box["t"]
        raised.append((level, struct.unpack_from("<I", page.buf, T.R_INTERRUPT_STATUS)[0],
                       t.interrupt_status_reg()))

    t = T.VirtioMmio(0x0A00_0000, 16, mem, raise_irq, ConfigBackend(), trigger)
    box["t"] = t
    t.attach_page(page)
    return t, page, raised


def expected(t):
    return b"".join(t.read(off, 4) for off in range(0, T.SIZE, 4))


def test_fresh_page_reads_like_the_registers():
    t, page, _ = make()
    assert bytes(page.buf) == expected(t)
    assert struct.unpack_from("<III", page.buf, 0) == (T.MAGIC, T.VERSION, 7)
    assert bytes(page.buf[T.CONFIG:T.CONFIG + 12]) == b"config-bytes"


REGS = [T.R_DEVICE_FEATURES_SEL, T.R_DRIVER_FEATURES, T.R_DRIVER_FEATURES_SEL, T.R_QUEUE_SEL,
        T.R_QUEUE_NUM, T.R_QUEUE_READY, T.R_QUEUE_NOTIFY, T.R_INTERRUPT_ACK, T.R_STATUS,
        T.R_QUEUE_DESC_LOW, T.R_QUEUE_DESC_HIGH, T.R_QUEUE_DRIVER_LOW, T.R_QUEUE_DRIVER_HIGH,
        T.R_QUEUE_DEVICE_LOW, T.R_QUEUE_DEVICE_HIGH, T.R_SHM_SEL, T.R_MAGIC, T.R_INTERRUPT_STATUS, 0x0F0]
VALUES = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 8, 15, 16, 64, 0x80, RAM, RAM + 0x1000, RAM + 0x2000,
                                    T.ACKNOWLEDGE | T.DRIVER, T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK,
                                    T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK | T.DRIVER_OK]),
                   st.integers(0, 0xFFFFFFFF))
OPS = st.one_of(
    st.tuples(st.just("w"), st.sampled_from(REGS), VALUES),
    st.tuples(st.just("cfg"), st.integers(0, 15), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("irq"), st.sampled_from([T.INT_USED_BUFFER, T.INT_CONFIG_CHANGE]), st.just(0)),
    st.tuples(st.just("fail"), st.just(0), st.just(0)),
    st.tuples(st.just("plane"), st.just(0), st.just(0)),
    st.tuples(st.just("backend"), st.integers(0, 11), st.integers(0, 255)),
    st.tuples(st.just("reset"), st.just(0), st.just(0)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trigger=st.sampled_from(T.TRIGGERS), ops=st.lists(OPS, max_size=40))
def test_page_matches_reads_after_any_sequence(trigger, ops):
    t, page, raised = make(trigger)
    for kind, a, b in ops:
        with t.lock:
            if kind == "w":
                t.write(a, b.to_bytes(4, "little"))
            elif kind == "cfg":
                t.write(T.CONFIG + a, b)
            elif kind == "irq":
                t._interrupt(a)
            elif kind == "fail":
                t.fail("a test error")
            elif kind == "plane":
                t.plane_used()
            elif kind == "backend":  # a run-time configuration change, announced with sync_page
                t.backend.config[a] = b
                t.sync_page()
            else:
                t.write(T.R_STATUS, b"\0\0\0\0")
        assert bytes(page.buf) == expected(t), (kind, a, b)
        for off in range(T.CONFIG, T.CONFIG + 16):  # byte-wide configuration reads too
            assert page.buf[off:off + 1] == t.read(off, 1)
    for level, in_page, reg in raised:  # every interrupt found its bit already in the page
        if level:
            assert in_page == reg


def test_page_rebuilt_by_load_state():
    t, page, _ = make()
    d = T.VirtioMmio(0x0A00_0000, 16, t.mem, lambda level: None, ConfigBackend())
    for reg, v in ((T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER), (T.R_DRIVER_FEATURES, 0),
                   (T.R_DRIVER_FEATURES_SEL, 1), (T.R_DRIVER_FEATURES, 1),
                   (T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK), (T.R_QUEUE_SEL, 1),
                   (T.R_QUEUE_NUM, 16), (T.R_QUEUE_DESC_LOW, RAM), (T.R_QUEUE_DRIVER_LOW, RAM + 0x1000),
                   (T.R_QUEUE_DEVICE_LOW, RAM + 0x2000), (T.R_QUEUE_READY, 1),
                   (T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK | T.DRIVER_OK)):
        d.write(reg, v.to_bytes(4, "little"))
    t.load_state(d.save_state())
    assert bytes(page.buf) == expected(t)
    assert struct.unpack_from("<I", page.buf, T.R_QUEUE_READY)[0] == 1
    assert struct.unpack_from("<I", page.buf, T.R_INTERRUPT_STATUS)[0] == T.INT_USED_BUFFER


def test_released_page_ignores_stores():
    page = P.RegPage(bytearray(8))
    page.put_word(4, 0x11223344)
    page.release()
    page.put_word(0, 1)
    page.put_bytes(0, b"x")
    assert page.contents() == b""


class FakeKvm:
    """Fake KVM/VM answering KVM_CHECK_EXTENSION from a table (pure logic)."""

    def __init__(self, **caps):
        self.caps = caps

    def check_extension(self, cap):
        from pyvmm._ffi import const

        for name, value in self.caps.items():
            if const(name) == cap:
                if isinstance(value, Exception):
                    raise value
                return value
        return 0


ALL = dict(KVM_CAP_READONLY_MEM=1, KVM_CAP_NR_MEMSLOTS=32764, KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED=1)


@pytest.mark.parametrize("caps, env, why", [
    (ALL, None, None),
    (ALL, "0", "PYVMM_VIRTIO_REGPAGE=0"),
    ({**ALL, "KVM_CAP_READONLY_MEM": 0}, None, "KVM offers no read-only memory slots (KVM_CAP_READONLY_MEM)"),
    ({**ALL, "KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED": 0}, None,
     "KVM does not offer KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED (no stage-2 FWB and DIC): "
     "the guest's Device mapping of the window would not see pyvmm's writes"),
])
def test_unavailable_reasons(monkeypatch, caps, env, why):
    if env is None:
        monkeypatch.delenv(P.ENV, raising=False)
    else:
        monkeypatch.setenv(P.ENV, env)
    k = FakeKvm(**caps)
    assert P.unavailable(k, k, 0x0A00_0000, page=4096) == why


def test_window_rounds_to_host_pages():
    assert P.window_size(16 << 10, 4096) == 16 << 10
    assert P.window_size(16 << 10, 16 << 10) == 16 << 10
    assert P.window_size(16 << 10, 64 << 10) == 64 << 10
    assert P.unavailable(FakeKvm(**ALL), FakeKvm(**ALL), 0x0A00_4000, page=64 << 10) == \
        "the virtio-mmio window at 0xa004000 is not aligned to the 64 KiB host page"

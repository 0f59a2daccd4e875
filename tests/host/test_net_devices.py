"""virtio-net, virtio-vsock and virtio-fs on a fake vhost plane
(tests/support/fake_vhost.py): what the guest sees (features, config space)
and what the plane is told at DRIVER_OK and at reset; the --net, --vsock
and --fs option syntax."""
import os
import struct

import pytest

from pyvmm.machine import devspec
from pyvmm.devices import virtio_mmio as T
from pyvmm.devices import virtio_net as N
from pyvmm.devices.vhost_backend import RING_FEATURES
from pyvmm.devices.virtio_fs import VirtioFs
from pyvmm.devices.virtio_vsock import VirtioVsock
from pyvmm.errors import UsageProblem
from pyvmm.memory import GuestMemory, GuestMemoryError
from pyvmm.net.tap import check_name
from support.fake_vhost import DgramTap, FakePlane

RAM = 0x40000000
VHOST_NET_FEATURES = RING_FEATURES | N.F_MRG_RXBUF | (1 << 27) | (1 << 26)  # + VIRTIO_NET_HDR, LOG_ALL


class FakeTap:
    name, fd = "pv0", 99

    def __init__(self):
        self.offloads = []

    def tunsetoffload(self, flags):
        self.offloads.append(flags)

    def close(self):
        pass


def bring_up(backend, features, shared=False, trigger=T.TRIGGER_EDGE, call=1234, levels=None):
    mem = GuestMemory()
    mem.add(RAM, 0x100000, shared=shared)
    dev = T.VirtioMmio(0xA000000, 16, mem, (levels if levels is not None else []).append, backend, trigger)
    kicks = [os.eventfd(0) for _ in range(backend.num_queues)]
    backend.attach_eventfds(kicks, call, direct=trigger == T.TRIGGER_EDGE)
    w = lambda off, v: dev.write(off, (v & 0xFFFFFFFF).to_bytes(4, "little"))
    w(T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER)
    for sel in (0, 1):
        w(T.R_DRIVER_FEATURES_SEL, sel)
        w(T.R_DRIVER_FEATURES, features >> (32 * sel))
    w(T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK)
    assert dev.status & T.FEATURES_OK
    for q in range(backend.num_queues - (backend.device_id == 19)):  # vsock: event queue left off
        base = RAM + 0x4000 * (q + 1)
        w(T.R_QUEUE_SEL, q)
        w(T.R_QUEUE_NUM, 64)
        w(T.R_QUEUE_DESC_LOW, base)
        w(T.R_QUEUE_DRIVER_LOW, base + 0x1000)
        w(T.R_QUEUE_DEVICE_LOW, base + 0x2000)
        w(T.R_QUEUE_READY, 1)
    w(T.R_STATUS, T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK | T.DRIVER_OK)
    return dev, mem, kicks


def test_net_offers_offloads_and_tells_vhost_only_ring_features():
    plane, tap = FakePlane(VHOST_NET_FEATURES), FakeTap()
    net = N.VirtioNet(tap, plane, N.parse_mac("52:54:00:12:34:56"))
    assert net.features & (N.F_MAC | N.F_STATUS | N.F_CSUM | N.F_GUEST_TSO4 | N.F_MRG_RXBUF | T.VIRTIO_F_VERSION_1)
    assert not net.features & ((1 << 27) | (1 << 26))  # vhost's own bits are not device features
    assert net.config_read(0, 8) == bytes.fromhex("525400123456") + struct.pack("<H", N.S_LINK_UP)
    wanted = T.VIRTIO_F_VERSION_1 | N.F_MAC | N.F_CSUM | N.F_GUEST_CSUM | N.F_GUEST_TSO4 | N.F_MRG_RXBUF
    dev, mem, kicks = bring_up(net, wanted)
    assert dev.error is None
    names = [c[0] for c in plane.calls]
    assert names[:2] == ["set_features", "set_mem_table"]
    assert plane.calls[0][1] == T.VIRTIO_F_VERSION_1 | N.F_MRG_RXBUF  # no offload bits to vhost-net
    gpa, size, hva, fd = plane.calls[1][1][0]
    assert (gpa, size, fd) == (RAM, 0x100000, -1) and hva == mem.regions[0].host_address()
    assert ("set_vring_addr", 0, hva + 0x4000, hva + 0x5000, hva + 0x6000) in plane.calls
    assert ("set_vring_kick", 1, kicks[1]) in plane.calls and ("set_vring_call", 0, 1234) in plane.calls
    assert ("set_vring_base", 0, 0) in plane.calls and ("set_vring_num", 1, 64) in plane.calls
    assert names[-2:] == ["net_set_backend", "net_set_backend"] and plane.calls[-1][2] == tap.fd
    assert tap.offloads == [N.TUN_F_CSUM | N.TUN_F_TSO4]
    # edge-triggered: the plane signals the irqfd (1234 here) unseen; the bit reads set while running
    assert int.from_bytes(dev.read(T.R_INTERRUPT_STATUS, 4), "little") == T.INT_USED_BUFFER
    dev.notify_all()  # after a restore: the kicks are signalled for the plane
    assert os.eventfd_read(kicks[0]) == 1
    plane.calls.clear()
    dev.write(T.R_STATUS, bytes(4))  # reset: the rings are taken from the tap first
    assert plane.calls == [("net_set_backend", 0, -1), ("net_set_backend", 1, -1)]
    for k in kicks:
        os.close(k)
    mem.close()


@pytest.mark.parametrize("trigger", T.TRIGGERS)
def test_pause_takes_a_plane_signal_only_from_its_own_eventfd(trigger):
    """A snapshot stops the plane (pause). Level-triggered, a used-buffer
    signal still in the plane's own call eventfd becomes the transport's
    interrupt status and line; edge-triggered, the call eventfd is KVM's
    irqfd, which pause must not read (KVM injects what it holds)."""
    levels = []
    call = os.eventfd(0, os.EFD_NONBLOCK)
    net = N.VirtioNet(FakeTap(), FakePlane(VHOST_NET_FEATURES), N.parse_mac("52:54:00:12:34:56"))
    dev, mem, kicks = bring_up(net, T.VIRTIO_F_VERSION_1, trigger=trigger, call=call, levels=levels)
    os.eventfd_write(call, 1)
    net.pause(dev)
    if trigger == T.TRIGGER_LEVEL:
        assert levels == [True] and dev.interrupt_status == T.INT_USED_BUFFER
        with pytest.raises(BlockingIOError):
            os.eventfd_read(call)
    else:
        assert levels == [] and dev.interrupt_status == 0 and os.eventfd_read(call) == 1
    for fd in kicks + [call]:
        os.close(fd)
    mem.close()


@pytest.mark.parametrize("features,flags", [
    (0, 0), (N.F_GUEST_TSO4, 0), (N.F_GUEST_CSUM, N.TUN_F_CSUM),
    (N.F_GUEST_CSUM | N.F_GUEST_TSO4 | N.F_GUEST_TSO6 | N.F_GUEST_ECN,
     N.TUN_F_CSUM | N.TUN_F_TSO4 | N.TUN_F_TSO6 | N.TUN_F_TSO_ECN),
    (N.F_GUEST_CSUM | N.F_GUEST_ECN, N.TUN_F_CSUM)])
def test_tun_offloads_follow_the_guest_receive_features(features, flags):
    assert N.tun_offloads(features) == flags


def test_mac_addresses():
    assert N.parse_mac("02:00:00:00:00:01") == bytes([2, 0, 0, 0, 0, 1])
    for bad in ("01:00:5e:00:00:01", "52:54:00:12:34", "zz:54:00:12:34:56"):
        with pytest.raises(ValueError):
            N.parse_mac(bad)
    m = N.random_mac()
    assert len(m) == 6 and m[0] & 3 == 2 and N.parse_mac(N.format_mac(m)) == m


def test_vsock_config_is_the_cid_and_its_event_queue_stays_here():
    plane = FakePlane(RING_FEATURES)
    v = VirtioVsock(plane, 42)
    assert plane.calls[0] == ("set_guest_cid", 42)
    assert v.config_read(0, 8) == struct.pack("<Q", 42) and v.num_queues == 3
    dev, mem, kicks = bring_up(v, T.VIRTIO_F_VERSION_1)
    served = {c[1] for c in plane.calls if c[0] == "set_vring_kick"}
    assert served == {0, 1} and plane.calls[-1] == ("set_running", True)
    dev.write(T.R_STATUS, bytes(4))
    assert plane.calls[-1] == ("set_running", False)
    with pytest.raises(UsageProblem, match="cid=2"):
        VirtioVsock(FakePlane(0), 2)
    for k in kicks:
        os.close(k)
    mem.close()


def test_vsock_posts_a_transport_reset_event_after_a_restore():
    """virtio 1.2, 5.10.6 Device Events: after a restore the device writes a
    struct virtio_vsock_event (le32 id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
    0) into a buffer of the event queue (2) and interrupts; without a
    buffer it waits for the driver's next notify of that queue. Nothing is
    posted without a restore."""
    from support.virtio_driver import Driver
    from pyvmm.devices.virtio_vsock import EVENT

    v = VirtioVsock(FakePlane(RING_FEATURES), 42)
    kicks = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(3)]
    v.attach_eventfds(kicks, -1)
    d = Driver(v)
    assert d.init(T.VIRTIO_F_VERSION_1)
    first, _ = d.buf(b"\xff" * 8)
    d.submit(EVENT, [(first, 8, True)])  # a buffer and a notify, no restore: nothing posted
    assert d.used(EVENT)[0] == 0 and v.events_posted == 0
    d.dev.after_restore()  # the buffer is there: posted at once
    idx, elems = d.used(EVENT)
    assert idx == 1 and elems[0] == (0, 4) and d.mem.read(first, 8) == bytes(4) + b"\xff" * 4
    assert True in d.levels and not v.reset_pending
    d.ack()
    d.dev.after_restore()  # no buffer left: the event waits ...
    assert v.reset_pending and d.used(EVENT)[0] == 1
    tiny, _ = d.buf(b"\xff" * 2)
    d.submit(EVENT, [(tiny, 2, True)], head=1)  # ... a buffer too small for it comes back empty
    assert d.used(EVENT)[1][1] == (1, 0) and d.mem.read(tiny, 2) == b"\xff\xff" and v.reset_pending
    second, _ = d.buf(b"\xff" * 4)
    d.submit(EVENT, [(second, 4, True)], head=2)  # the next one that fits takes it
    assert d.used(EVENT)[1][2] == (2, 4) and d.mem.read(second, 4) == bytes(4)
    assert not v.reset_pending and v.events_posted == 2
    for k in kicks:
        os.close(k)
    d.mem.close()


def test_fs_config_and_ring_enable_and_stop():
    plane = FakePlane(RING_FEATURES)
    plane.protocol_negotiated = True
    fs = VirtioFs(plane, "share")
    assert fs.config_read(0, 40) == b"share".ljust(36, b"\0") + struct.pack("<I", 1)
    dev, mem, kicks = bring_up(fs, T.VIRTIO_F_VERSION_1, shared=True)
    assert plane.calls[1][1][0][3] == mem.regions[0].fd >= 0  # the memfd goes to the daemon
    assert [c for c in plane.calls if c[0] == "set_vring_enable"] == [("set_vring_enable", 0, True),
                                                                      ("set_vring_enable", 1, True)]
    dev.write(T.R_STATUS, bytes(4))
    assert plane.calls[-2:] == [("get_vring_base", 0), ("get_vring_base", 1)]
    assert fs.snapshot_refusal
    for k in kicks:
        os.close(k)
    mem.close()


def test_shared_memory_and_host_addresses():
    mem = GuestMemory()
    r = mem.add(RAM, 0x4000, shared=True)
    assert r.fd >= 0
    mem.write(RAM + 0x10, b"abc")
    assert os.pread(r.fd, 3, 0x10) == b"abc"  # the memfd is the guest RAM
    assert mem.host_address(RAM + 0x10, 3) == r.host_address() + 0x10
    with pytest.raises(GuestMemoryError):
        mem.host_address(RAM + 0x3FFF, 2)
    mem.close()


@pytest.mark.parametrize("text,spec", [
    ("tap=pv0", devspec.NetSpec("pv0")),
    ("tap=pv0,mac=52:54:00:AB:cd:01,vhost=off", devspec.NetSpec("pv0", "52:54:00:ab:cd:01", False)),
])
def test_net_option(text, spec):
    assert devspec.parse_net(text) == spec


@pytest.mark.parametrize("text,msg", [
    ("pv0", "not key=value"), ("tap=pv0,speed=10", "unknown key 'speed'"), ("mac=52:54:00:12:34:56", "tap=IFNAME"),
    ("tap=pv0,tap=pv1", "given twice"), ("tap=pv0,vhost=maybe", "choose on or off"),
    ("tap=a/b", "interface name"), ("tap=" + "x" * 16, "interface name"), ("tap=pv0,mac=01:00:00:00:00:00", "multicast"),
])
def test_net_option_refusals(text, msg):
    with pytest.raises(UsageProblem, match=msg):
        devspec.parse_net(text)


def test_vsock_and_fs_options():
    assert devspec.parse_vsock("cid=3") == devspec.VsockSpec(3)
    for bad, msg in (("cid=x", "decimal"), ("cid=1", "reserved"), ("port=3", "unknown key"), ("cid=-5", "decimal")):
        with pytest.raises(UsageProblem, match=msg):
            devspec.parse_vsock(bad)
    assert devspec.parse_fs("tag=t,dir=/srv") == devspec.FsSpec("t", "/srv", None)
    assert devspec.parse_fs("tag=t,socket=/run/fs.sock") == devspec.FsSpec("t", None, "/run/fs.sock")
    for bad, msg in (("dir=/srv", "tag=TAG"), ("tag=t", "exactly one"), ("tag=t,dir=/a,socket=/b", "exactly one"),
                     ("tag=" + "x" * 37 + ",dir=/a", "at most 36"), ("tag=t,dir=", "empty"), ("tag=t,ro=1", "unknown")):
        with pytest.raises(UsageProblem, match=msg):
            devspec.parse_fs(bad)


def test_deleted_links_are_read_from_rtnetlink_messages():
    """RTM_DELLINK (17) messages name the deleted interface's index in their
    ifinfomsg; other messages, and a truncated one, are skipped."""
    from pyvmm.net.link_watch import IFINFOMSG, NLMSG_HDR, RTM_DELLINK, RTM_NEWLINK, deleted_indices

    def msg(kind, index, extra=b""):
        body = IFINFOMSG.pack(0, 0, 1, index, 0, 0) + extra
        raw = NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, 0, 0, 0) + body
        return raw + bytes(-len(raw) % 4)
    data = msg(RTM_NEWLINK, 3) + msg(RTM_DELLINK, 7, b"\x01\x02\x03") + msg(RTM_DELLINK, 9)
    assert deleted_indices(data) == [7, 9]
    assert deleted_indices(data[:-4]) == [7]  # the last message cut short
    assert deleted_indices(NLMSG_HDR.pack(4, RTM_DELLINK, 0, 0, 0)) == []  # a length below the header's


def test_interface_names():
    check_name("tap0")
    for bad in ("", "a" * 16, "a b", "..", "x/y"):
        with pytest.raises(UsageProblem):
            check_name(bad)


# ---- vhost=off: packets moved by pyvmm ----------------------------------------------------

class FakeIo:
    def __init__(self):
        self.watched, self.enabled = {}, {}

    def watch(self, fd, handler):
        self.watched[fd] = handler

    def enable(self, fd, on):
        self.enabled[fd] = on


def test_python_backend_moves_frames_both_ways():
    from support.virtio_driver import Driver

    tap = DgramTap()
    net = N.VirtioNetPython(tap, N.parse_mac("52:54:00:00:00:05"))
    net.io = io = FakeIo()
    assert not net.features & (N.OFFLOADS | N.F_MRG_RXBUF)
    d = Driver(net)
    assert d.init(T.VIRTIO_F_VERSION_1 | N.F_MAC)
    assert io.enabled[tap.fd] is True
    frame = bytes(12) + b"\xff" * 6 + b"guest frame"
    a, n = d.buf(frame)
    d.submit(N.TX, [(a, n, False)])
    assert tap.peer.recv(2000) == frame and net.tx_packets == 1
    # host -> guest: no receive buffers yet, so the tap is not watched
    tap.peer.send(bytes(12) + b"host frame")
    io.watched[tap.fd]()
    assert io.enabled[tap.fd] is False
    rx, _ = d.buf(size=2048)
    d.submit(N.RX, [(rx, 2048, True)])
    assert io.enabled[tap.fd] is True
    io.watched[tap.fd]()
    idx, elems = d.used(N.RX)
    assert idx == 1 and elems[0] == (0, 22)
    assert d.mem.read(rx, 22) == bytes(10) + b"\x01\x00" + b"host frame"  # num_buffers = 1
    # a frame larger than the buffer is dropped, the buffer returned empty
    small, _ = d.buf(size=16)
    d.submit(N.RX, [(small, 16, True)], head=1)
    tap.peer.send(bytes(12) + b"x" * 100)
    io.watched[tap.fd]()
    assert d.used(N.RX)[1][1] == (1, 0) and net.dropped == 1
    tap.close()
    d.mem.close()

"""The vhost-user front-end against the protocol spec (QEMU's
docs/interop/vhost-user.rst), with a fake back-end on a socketpair
(tests/support/fake_vhost.py)."""
import os
import socket
import struct

import pytest

from pyvmm.vhost import user as U
from support.fake_vhost import FakeVhostUserBackend

VERSION_1, EVENT_IDX = 1 << 32, 1 << 29


def pair(features=VERSION_1 | EVENT_IDX | U.VHOST_USER_F_PROTOCOL_FEATURES,
         protocol=U.PROTOCOL_F_REPLY_ACK | U.PROTOCOL_F_MQ, ack_status=0):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    backend = FakeVhostUserBackend(b, features, protocol, ack_status)
    backend.start()
    return U.VhostUser(a, "virtio-fs test"), backend


def test_header_layout_is_request_flags_size_little_endian():
    m = U.message(U.SET_OWNER)
    assert m == bytes.fromhex("03000000" "01000000" "00000000")
    m = U.message(U.SET_FEATURES, struct.pack("<Q", 1 << 32), need_reply=True)
    assert m[:12] == struct.pack("<III", 2, 0x1 | 0x8, 8) and len(m) == 20


def test_memory_table_payload():
    p = U.mem_table_payload([(0x40000000, 0x10000000, 0x7F0000000000, 0)])
    assert p == struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0x40000000, 0x10000000, 0x7F0000000000, 0)
    with pytest.raises(ValueError):
        U.mem_table_payload([])
    with pytest.raises(ValueError):
        U.mem_table_payload([(0, 1, 2, 3)] * 9)


def test_handshake_negotiates_only_supported_protocol_features():
    fe, be = pair()
    assert fe.handshake() & VERSION_1
    assert fe.protocol_features == U.PROTOCOL_F_REPLY_ACK  # MQ offered, not taken
    assert fe.get_features() == VERSION_1 | EVENT_IDX  # the protocol bit is not a virtio feature
    fe.close()
    be.join(5)
    reqs = [(m[0], m[1]) for m in be.messages]
    # GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, then SET_OWNER with an ack requested
    assert reqs == [(1, 1), (15, 1), (16, 1), (3, 1 | 8)]
    assert struct.unpack("<Q", be.messages[2][2])[0] == U.PROTOCOL_F_REPLY_ACK


def test_ring_setup_sequence_passes_fds_and_layouts():
    fe, be = pair()
    fe.handshake()
    memfd = os.memfd_create("ram")
    kick, call = os.eventfd(0), os.eventfd(0)
    try:
        fe.set_features(VERSION_1 | EVENT_IDX)
        fe.set_mem_table([(0x40000000, 0x200000, 0x7F0000000000, memfd)])
        fe.set_vring_num(1, 256)
        fe.set_vring_base(1, 7)
        fe.set_vring_addr(1, 0x1000, 0x2000, 0x3000)
        fe.set_vring_kick(1, kick)
        fe.set_vring_call(1, call)
        fe.set_vring_enable(1, True)
        be.vring_bases[1] = 42
        assert fe.get_vring_base(1) == 42
    finally:
        fe.close()
        be.join(5)
        for fd in (memfd, kick, call):
            os.close(fd)
    msgs = {m[0]: m for m in be.messages[4:]}
    assert struct.unpack("<Q", msgs[U.SET_FEATURES][2])[0] == VERSION_1 | EVENT_IDX | U.VHOST_USER_F_PROTOCOL_FEATURES
    assert len(msgs[U.SET_MEM_TABLE][3]) == 1 and len(msgs[U.SET_MEM_TABLE][2]) == 8 + 32
    assert msgs[U.SET_VRING_NUM][2] == struct.pack("<II", 1, 256)
    assert msgs[U.SET_VRING_BASE][2] == struct.pack("<II", 1, 7)
    # index, flags, descriptor, used, available, log
    assert msgs[U.SET_VRING_ADDR][2] == struct.pack("<IIQQQQ", 1, 0, 0x1000, 0x3000, 0x2000, 0)
    assert msgs[U.SET_VRING_KICK][2] == struct.pack("<Q", 1) and len(msgs[U.SET_VRING_KICK][3]) == 1
    assert msgs[U.SET_VRING_CALL][2] == struct.pack("<Q", 1) and len(msgs[U.SET_VRING_CALL][3]) == 1
    assert msgs[U.SET_VRING_ENABLE][2] == struct.pack("<II", 1, 1)
    assert all(m[1] & 8 for m in be.messages[4:-1])  # REPLY_ACK: each state change acknowledged
    assert not msgs[U.GET_VRING_BASE][1] & 8  # has its own reply


def test_a_refusal_and_a_vanished_backend_are_one_line_errors():
    fe, be = pair(ack_status=1)
    with pytest.raises(U.VhostUserError, match="refused request 3"):
        fe.handshake()
    fe.close()
    be.join(5)
    a, b = socket.socketpair()
    b.close()
    fe = U.VhostUser(a, "virtio-fs gone")
    with pytest.raises(U.VhostUserError, match="virtio-fs gone: the back-end"):
        fe.handshake()
    fe.close()


def test_no_protocol_features_means_no_protocol_requests():
    fe, be = pair(features=VERSION_1)
    fe.handshake()
    fe.set_features(VERSION_1)
    fe.close()
    be.join(5)
    assert [m[0] for m in be.messages] == [U.GET_FEATURES, U.SET_OWNER, U.SET_FEATURES]
    assert struct.unpack("<Q", be.messages[2][2])[0] == VERSION_1
    assert not fe.protocol_negotiated


def test_anonymous_ram_is_refused():
    fe, be = pair()
    fe.handshake()
    with pytest.raises(U.VhostUserError, match="not shareable"):
        fe.set_mem_table([(0x40000000, 0x1000, 0x7F00000000, -1)])
    fe.close()
    be.join(5)

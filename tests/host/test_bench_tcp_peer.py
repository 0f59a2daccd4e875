"""bench/data_planes.py's TCP listener (TcpPeer), driven by local sockets:
what it records per transfer is what the benchmark's TCP rows report, so a
transfer that did not finish must record nothing."""
import os
import socket
import sys
import time

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")


@pytest.fixture
def peer():
    sys.path.insert(0, BENCH)
    try:
        import data_planes
    finally:
        sys.path.remove(BENCH)
    p = data_planes.TcpPeer(0, 0, host="127.0.0.1")
    yield p
    p.close()


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_guest_to_host_counts_every_byte_until_the_guest_ends(peer):
    size = (3 << 20) + 7
    with socket.create_connection(("127.0.0.1", peer.g2h_port)) as c:
        c.sendall(b"\0" * size)
        c.shutdown(socket.SHUT_WR)
        assert c.recv(1) == b""  # the peer closes once it read everything
    assert wait_for(lambda: peer.done)
    [(direction, got, seconds)] = peer.done
    assert (direction, got) == ("g2h", size)
    assert seconds > 0


def test_host_to_guest_ends_when_the_guest_has_every_byte(peer):
    peer.h2g_bytes = (16 << 20) + 3  # more than the socket buffers hold
    got = 0
    with socket.create_connection(("127.0.0.1", peer.h2g_port)) as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        c.shutdown(socket.SHUT_WR)  # what tcp_cat does with stdin at its end

        def read(until):
            nonlocal got
            while got < until:
                chunk = c.recv(min(1 << 16, until - got))
                if not chunk:
                    break
                got += len(chunk)
        time.sleep(0.2)
        assert not peer.done  # the guest read nothing yet
        read(peer.h2g_bytes - (1 << 20))
        time.sleep(0.3)  # the last MiB fits the host's send buffer: sendall() is done, the transfer is not
        assert not peer.done
        read(peer.h2g_bytes + 1)
        assert c.recv(1) == b""
    assert got == peer.h2g_bytes
    assert wait_for(lambda: peer.done)
    [(direction, sent, seconds)] = peer.done
    assert (direction, sent) == ("h2g", peer.h2g_bytes)
    assert seconds > 0.5


def test_a_host_to_guest_transfer_the_guest_drops_records_nothing(peer):
    peer.h2g_bytes = 64 << 20  # far more than the socket buffers hold
    c = socket.create_connection(("127.0.0.1", peer.h2g_port))
    c.recv(1 << 16)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close with a reset
    c.close()
    # the next transfer is served (the dropped one's thread went on), and is the only one recorded
    peer.h2g_bytes = 1000
    with socket.create_connection(("127.0.0.1", peer.h2g_port)) as c:
        c.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    assert len(data) == 1000
    assert wait_for(lambda: peer.done)
    assert [(d, n) for d, n, _ in peer.done] == [("h2g", 1000)]


def test_close_stops_listening(peer):
    ports = (peer.g2h_port, peer.h2g_port)
    peer.close()
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

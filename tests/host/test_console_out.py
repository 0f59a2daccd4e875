"""``--console-out`` endpoints (pyvmm/console_out.py), pure host I/O: a pty,
a unix socket and a log file carry the console; output nobody reads is
dropped, never blocking; everything is gone after close()."""
import os
import select
import socket
import stat
import time

import pytest

from pyvmm import _threads, console_out
from pyvmm.errors import UsageProblem


def _read_ready(fd, timeout=5.0) -> bytes:
    r, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 65536) if r else b""


@pytest.mark.parametrize("spec", ["", "tty", "pty", "unix:/tmp/x", "file:/tmp/x"])
def test_parse_accepts(spec):
    assert console_out.parse(spec) == (spec or "tty")


@pytest.mark.parametrize("spec", ["ptty", "unix:", "file", "pty:x", "serial"])
def test_parse_refuses_with_the_choices(spec):
    with pytest.raises(UsageProblem, match="choose tty, pty, unix:PATH or file:PATH"):
        console_out.parse(spec)


def test_pty_carries_both_ways_and_never_blocks():
    ep = console_out.open_endpoint("pty")
    try:
        assert ep.name.startswith("/dev/pts/")
        user = os.open(ep.name, os.O_RDWR | os.O_NOCTTY)
        try:
            ep.output(b"hello\n")
            assert _read_ready(user) == b"hello\n"  # raw: no CR added
            os.write(user, b"typed")
            assert _read_ready(ep.input_fd) == b"typed"
        finally:
            os.close(user)
        t0 = time.monotonic()
        for _ in range(64):
            ep.output(b"x" * 65536)  # 4 MiB nobody reads
        assert time.monotonic() - t0 < 2.0
        assert ep.dropped > 0
    finally:
        ep.close()
    assert ep.input_fd is None


def test_unix_socket_console(tmp_path):
    path = str(tmp_path / "console.sock")
    ep = console_out.open_endpoint(f"unix:{path}")
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        ep.output(b"before anyone connects")  # dropped
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        c.settimeout(5)
        deadline = time.monotonic() + 5
        while ep._client is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ep.output(b"hello")
        assert c.recv(100) == b"hello"
        c.sendall(b"input")
        assert _read_ready(ep.input_fd) == b"input"
        other = socket.socket(socket.AF_UNIX)
        other.connect(path)
        other.settimeout(5)
        assert other.recv(100) == console_out.UnixEndpoint.BUSY
        other.close()
        t0 = time.monotonic()
        for _ in range(200):
            ep.output(b"y" * 65536)  # 12 MiB the client does not read
        assert time.monotonic() - t0 < 2.0 and ep.dropped > len(b"before anyone connects")
        c.close()
    finally:
        ep.close()
    assert not os.path.exists(path)
    assert "console-unix" not in _threads.alive()


def test_unix_close_while_input_waits_for_the_guest(tmp_path):
    """Input the guest never reads fills the pipe; close() still ends the thread at once."""
    path = str(tmp_path / "c.sock")
    ep = console_out.open_endpoint(f"unix:{path}")
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    c.setblocking(False)
    try:
        for _ in range(100):
            c.send(b"z" * 65536)
    except BlockingIOError:
        pass
    t0 = time.monotonic()
    ep.close()
    c.close()
    assert time.monotonic() - t0 < 2.0
    assert "console-unix" not in _threads.alive()


def test_log_file(tmp_path):
    path = tmp_path / "console.log"
    ep = console_out.open_endpoint(f"file:{path}")
    ep.output(b"line 1\n")
    ep.output(b"line 2\n")
    ep.close()
    assert path.read_bytes() == b"line 1\nline 2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ep.input_fd is None
    with pytest.raises(UsageProblem, match="Is a directory"):
        console_out.open_endpoint(f"file:{tmp_path}")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(UsageProblem, match="not a regular file"):
            console_out.open_endpoint(f"file:{fifo}")
    finally:
        os.close(reader)
    with pytest.raises(UsageProblem, match="No such file or directory"):
        console_out.open_endpoint(f"file:{tmp_path}/no/dir.log")


def test_pty_survives_its_user_going_away():
    ep = console_out.open_endpoint("pty")
    try:
        for round_ in range(2):  # attach, detach, attach again
            user = os.open(ep.name, os.O_RDWR | os.O_NOCTTY)
            os.write(user, b"r%d" % round_)
            assert _read_ready(ep.input_fd) == b"r%d" % round_
            os.close(user)
        r, _, _ = select.select([ep.input_fd], [], [], 0.2)
        assert not r  # no hang-up for the console input to trip over
    finally:
        ep.close()

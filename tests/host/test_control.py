"""The control socket's server and client (pyvmm/control/channel.py) with a fake
handler: pure socket logic, no VM."""
import json
import os
import socket
import stat
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.control import channel as control
from pyvmm.control import ControlError, ControlServer, call
from pyvmm.control.channel import RequestError, parse_request
from pyvmm.errors import UsageProblem


class FakeHandler:
    """Records requests; answers like a VMM would (named fake: no machine)."""

    def __init__(self):
        self.requests = []

    def __call__(self, request, send):
        self.requests.append(request)
        if request["cmd"] == "snapshot":
            for done in (0, 50, 100):
                send({"progress": [done, 100], "what": "memory"})
            return {"ok": True, "bytes": 100}
        if request["cmd"] == "explode":
            raise RuntimeError("boom")
        if request["cmd"] == "refuse":
            raise ControlError("not now")
        if request["cmd"] == "migrate":  # replies itself, then goes on (as the VM ends)
            send({"ok": True, "dest": "unix:/d"})
            return None
        return {"ok": True, "state": "running"}


@pytest.fixture
def server(tmp_path):
    handler = FakeHandler()
    s = ControlServer(str(tmp_path / "vm.sock"), handler)
    s.start()
    yield s, handler
    s.close()


def test_socket_is_private_and_answers(server):
    s, handler = server
    assert stat.S_ISSOCK(os.stat(s.path).st_mode)
    assert os.stat(s.path).st_mode & 0o777 == 0o600
    assert call(s.path, {"cmd": "status"}) == {"ok": True, "state": "running"}
    assert handler.requests == [{"cmd": "status"}]


def test_progress_is_streamed_before_the_reply(server):
    s, _ = server
    seen = []
    reply = call(s.path, {"cmd": "snapshot", "path": "/x"}, lambda d, t, w: seen.append((d, t, w)))
    assert seen == [(0, 100, "memory"), (50, 100, "memory"), (100, 100, "memory")]
    assert reply["bytes"] == 100


def test_a_handler_that_sent_its_reply_itself_is_not_answered_twice(server):
    s, _ = server
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(s.path)
        c.sendall(b'{"cmd": "migrate"}\n')
        c.settimeout(5)
        got = b""
        while chunk := c.recv(4096):
            got += chunk
    assert got.splitlines() == [b'{"ok": true, "dest": "unix:/d"}']


def test_errors_come_back_as_one_line_and_the_server_survives(server):
    s, _ = server
    with pytest.raises(ControlError, match="^not now$"):
        call(s.path, {"cmd": "refuse"})
    with pytest.raises(ControlError, match="internal error: RuntimeError: boom"):
        call(s.path, {"cmd": "explode"})
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(s.path)
    raw.sendall(b"this is not json\n")
    assert b'"ok": false, "error": "bad request: request is not JSON' in raw.recv(4096)
    raw.close()
    assert call(s.path, {"cmd": "status"})["ok"]


def test_closing_removes_the_socket(tmp_path):
    s = ControlServer(str(tmp_path / "c.sock"), FakeHandler())
    s.start()
    s.close()
    assert not os.path.exists(tmp_path / "c.sock")


def test_stale_socket_is_replaced_live_one_refused(tmp_path):
    path = str(tmp_path / "vm.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # the file stays: a VMM killed with SIGKILL leaves this
    s = ControlServer(path, FakeHandler())
    s.start()
    try:
        with pytest.raises(UsageProblem, match="another VMM is listening"):
            ControlServer(path, FakeHandler())
        assert call(path, {"cmd": "status"})["ok"]
    finally:
        s.close()


def test_a_regular_file_in_the_way_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("precious")
    with pytest.raises(UsageProblem, match="not a socket"):
        ControlServer(str(f), FakeHandler())
    assert f.read_text() == "precious"


def test_too_long_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageProblem, match="longer than 107 bytes"):
        ControlServer("/tmp/" + "x" * 120, FakeHandler())


def test_client_errors(tmp_path):
    with pytest.raises(UsageProblem, match="no control socket"):
        call(str(tmp_path / "missing.sock"), {"cmd": "status"})
    path = str(tmp_path / "dead.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()
    with pytest.raises(UsageProblem, match="has exited"):
        call(path, {"cmd": "status"})


def test_a_vmm_that_dies_mid_request_is_reported(tmp_path):
    path = str(tmp_path / "vm.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def die():
        conn, _ = listener.accept()
        conn.recv(100)
        conn.close()
    t = threading.Thread(target=die)
    t.start()
    with pytest.raises(ControlError, match="closed the connection"):
        call(path, {"cmd": "snapshot"})
    t.join()
    listener.close()


# -- issue 14 #3: a client is outside input ------------------------------------------

def _raw(path, data: bytes, timeout=10.0) -> bytes:
    """Send ``data`` on a new connection; everything the server answers."""
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(timeout)
    c.connect(path)
    try:
        try:
            c.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading (too long): its answer is still there
        out = bytearray()
        while True:
            try:
                chunk = c.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return bytes(out)
            out += chunk
    finally:
        c.close()


def _error(reply: bytes) -> str:
    msg = json.loads(reply.splitlines()[0])
    assert msg["ok"] is False
    return msg["error"]


def test_two_hundred_thousand_brackets_are_refused_and_the_server_lives(server):
    s, handler = server
    assert _error(_raw(s.path, b"[" * 200_000 + b"\n")) == "bad request: request longer than 65536 bytes"
    assert _error(_raw(s.path, b"[" * 60_000 + b"\n")) == "bad request: request is nested deeper than 16 levels"
    assert _error(_raw(s.path, b'{"cmd": "status", "x": ' + b"[" * 17 + b"]" * 17 + b"}\n")) == \
        "bad request: request is nested deeper than 16 levels"
    assert call(s.path, {"cmd": "status"})["ok"]
    assert handler.requests == [{"cmd": "status"}]  # the handler never saw the bad ones


def test_a_silent_client_does_not_block_others(server):
    s, _ = server
    s.request_timeout = 3.0
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(s.path)  # connects, says nothing
    try:
        t0 = time.monotonic()
        assert call(s.path, {"cmd": "status"}, timeout=5)["ok"]
        assert time.monotonic() - t0 < 3.0  # served while the silent one still waits
        silent.settimeout(5)
        assert silent.recv(100) == b""  # dropped after request_timeout, without an answer
    finally:
        silent.close()


def test_more_clients_than_the_limit_are_told_busy(server):
    s, _ = server
    idle = []
    try:
        for _ in range(control.MAX_CLIENTS):
            c = socket.socket(socket.AF_UNIX)
            c.connect(s.path)
            idle.append(c)
        deadline = time.monotonic() + 10
        while len(s._clients) < control.MAX_CLIENTS:  # until the server has accepted them all
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _error(_raw(s.path, b'{"cmd": "status"}\n')).startswith("busy:")
    finally:
        for c in idle:
            c.close()
    deadline = time.monotonic() + 5
    while True:  # their threads notice the closed connections
        try:
            assert call(s.path, {"cmd": "status"}, timeout=5)["ok"]
            break
        except ControlError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_busy_answer_sent_before_the_request_is_still_read():
    # The VMM may answer "busy" and close before the client has sent its
    # request: the send then fails with EPIPE, and the answer must still win.
    client, vmm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        vmm.sendall(b'{"ok": false, "error": "busy: 8 clients are connected; try again"}\n')
        vmm.close()
        with pytest.raises(ControlError, match="^busy: "):
            control._exchange(client, "vm.sock", {"cmd": "status"}, None)
    finally:
        client.close()


def test_a_client_that_does_not_read_its_replies_loses_them_not_the_request(tmp_path):
    done = threading.Event()

    def handler(request, send):
        for i in range(2000):
            send({"progress": [i, 2000], "what": "memory", "pad": "x" * 1000})
        done.set()
        return {"ok": True}

    s = ControlServer(str(tmp_path / "vm.sock"), handler)
    s.send_timeout = 0.5
    s.start()
    try:
        c = socket.socket(socket.AF_UNIX)
        c.connect(s.path)
        c.sendall(b'{"cmd": "snapshot"}\n')  # and never reads
        assert done.wait(20)
        c.close()
    finally:
        s.close()


def _valid_requests():
    return st.fixed_dictionaries({"cmd": st.sampled_from(["status", "pause", "resume", "snapshot", "stop"])},
                                 optional={"path": st.text(max_size=20), "stop": st.booleans()})


def _mutate(data: bytes, how, pos, junk) -> bytes:
    pos = pos % (len(data) + 1)
    if how == "cut":
        return data[:pos]
    if how == "insert":
        return data[:pos] + junk + data[pos:]
    if how == "replace":
        return data[:pos] + junk + data[pos + len(junk):]
    if how == "nest":
        return b"[" * (pos + 1) * 8 + data + b"]" * (pos + 1) * 8
    return data


@given(req=_valid_requests(), how=st.sampled_from(["none", "cut", "insert", "replace", "nest"]),
       pos=st.integers(0, 200), junk=st.one_of(st.binary(max_size=8), st.sampled_from(
           [b"NaN", b"Infinity", b"-Infinity", b"\xff\xfe", b"1e999999", b"[[[[", b'"', b"\\", b"{}", b"null"])))
@settings(max_examples=500, deadline=None)
def test_property_every_mutated_request_is_parsed_or_refused_cleanly(req, how, pos, junk):
    """A valid request, mutated: parse_request returns an object with a
    "cmd" string or raises RequestError with a reason; nothing else."""
    data = _mutate(json.dumps(req).encode(), how, pos, junk)
    try:
        out = parse_request(data)
    except RequestError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(out, dict) and isinstance(out["cmd"], str)
    assert json.dumps(out, allow_nan=False)  # nothing non-JSON got through


def test_server_survives_a_burst_of_garbage(server):
    s, _ = server
    for data in (b"\xff\xfe\n", b"NaN\n", b'{"cmd": "status", "x": 1000e306}\n', b'{"cmd": NaN}\n', b"[]\n", b'"x"\n', b"{" * 70_000, b"\n",
                 b'{"cmd": 1}\n'):
        reply = _raw(s.path, data)
        assert reply == b"" or _error(reply).startswith("bad request: ")
    assert call(s.path, {"cmd": "status"})["ok"]

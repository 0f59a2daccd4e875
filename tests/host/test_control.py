"""The control socket's server and client (pyvmm/control/channel.py) with a fake
handler: pure socket logic, no VM."""
import os
import socket
import stat
import threading

import pytest

from pyvmm.control import ControlError, ControlServer, call
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


def test_errors_come_back_as_one_line_and_the_server_survives(server):
    s, _ = server
    with pytest.raises(ControlError, match="^not now$"):
        call(s.path, {"cmd": "refuse"})
    with pytest.raises(ControlError, match="internal error: RuntimeError: boom"):
        call(s.path, {"cmd": "explode"})
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(s.path)
    raw.sendall(b"this is not json\n")
    assert b'"ok": false' in raw.recv(4096)
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

"""The control requests' snapshot path handling (pyvmm/control/handler.py)
with a fake machine (named: no VM): issue 14 #7, a bad path is reported
as what it is, never as "internal error", and the guest runs on."""
import threading

import pytest

from pyvmm.machine import Machine
from pyvmm.memory import GuestMemory
from support.fake_dirty_vm import FakeDirtyVm

from pyvmm.control import ControlError
from pyvmm.snapshot import format as fmt
from pyvmm.control import handler as live
from pyvmm.snapshot import machine_snapshot as ms


class FakeMachine:
    transports = Machine.transports

    def __init__(self):
        self.paused = False
        self.virtio = []  # no devices whose state lives outside pyvmm
        self.pci_virtio, self.pci = [], None  # as Machine's (no PCI device)
        self.io_lock = threading.RLock()  # held while a snapshot is taken and written
        self.calls = []
        # the dirty log a snapshot leaves on (pyvmm/snapshot/chain.py): a fake VM fd, no RAM
        self.vm, self.mem, self.owned = FakeDirtyVm(), GuestMemory(), []

    def pause(self):
        self.paused = True
        self.calls.append("pause")

    def resume(self):
        self.paused = False
        self.calls.append("resume")

    def finish(self, status, reason):
        self.calls.append("finish")


@pytest.fixture
def controller(monkeypatch):
    monkeypatch.setattr(ms, "_take", lambda m, progress=None: fmt.Snapshot({"machine": {"memory": []}}, {}))
    c = live.Controller()
    m = FakeMachine()
    c.attach(m)
    return c, m


def _snapshot(c, path):
    return c.handle({"cmd": "snapshot", "path": str(path)}, lambda msg: None)


def test_target_is_a_directory(controller, tmp_path):
    c, m = controller
    with pytest.raises(ControlError, match=f"^snapshot {tmp_path} is a directory; give a file name$"):
        _snapshot(c, tmp_path)
    assert m.calls == [] and not m.paused


def test_missing_directory(controller, tmp_path):
    c, m = controller
    with pytest.raises(ControlError, match="directory .*/nope does not exist"):
        _snapshot(c, tmp_path / "nope" / "vm.snap")


def test_unwritable_path_is_the_hosts_reason_and_the_guest_resumes(controller, tmp_path):
    c, m = controller
    path = tmp_path / ("x" * 300)  # a name the file system refuses
    with pytest.raises(fmt.WriteError, match="^cannot write .*: File name too long$"):
        _snapshot(c, path)
    assert m.calls == ["pause", "resume"] and not m.paused
    assert list(tmp_path.iterdir()) == []


def test_a_good_path_writes(controller, tmp_path):
    c, m = controller
    reply = _snapshot(c, tmp_path / "vm.snap")
    assert reply["ok"] and reply["state"] == "running" and (tmp_path / "vm.snap").exists()


@pytest.mark.parametrize("request_,message", [
    ({"cmd": "reboot"}, "unknown request 'reboot' (status, pause, resume, snapshot, migrate, stop)"),
    ({"cmd": "status", "x": 1}, "status request state has unknown fields 'x'"),
    ({"cmd": "snapshot"}, "snapshot request state lacks 'path'"),
    ({"cmd": "snapshot", "path": 7}, "snapshot request state: 'path' must be a string, not 7"),
    ({"cmd": "snapshot", "path": "/tmp/x", "stop": "yes"}, "'stop' must be true or false, not 'yes'"),
    ({"cmd": "snapshot", "path": "relative.snap"}, "snapshot needs an absolute path, not 'relative.snap'"),
])
def test_requests_are_checked_field_by_field(controller, request_, message):
    c, m = controller
    with pytest.raises(ControlError) as info:
        c.handle(request_, lambda msg: None)
    assert message in str(info.value)
    assert m.calls == []

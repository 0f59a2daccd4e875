"""virtiofsd started before the VM is built (Machine.spawn_daemons, for
start-up time) and connected to later: a daemon that dies before it accepts
is a one-line error, and one never handed to a device is stopped when the
machine closes. The daemons here are fakes (shell scripts named by
PYVMM_VIRTIOFSD), since what is checked is pyvmm's process handling."""
import os

import pytest

from pyvmm.errors import PyvmmError
from pyvmm.machine.config import MachineConfig
from pyvmm.machine.devspec import FsSpec
from pyvmm.machine.machine import Machine
from pyvmm.vhost.virtiofsd import Virtiofsd


def fake_daemon(tmp_path, monkeypatch, body):
    path = tmp_path / "fake-virtiofsd"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    monkeypatch.setenv("PYVMM_VIRTIOFSD", str(path))


def test_a_daemon_spawned_but_never_handed_to_a_device_is_stopped_at_close(tmp_path, monkeypatch):
    fake_daemon(tmp_path, monkeypatch, "exec sleep 60")
    m = Machine(None, MachineConfig(kernel="Image", fss=[FsSpec(tag="t", dir=str(tmp_path))]), None, lambda b: None)
    m.spawn_daemons()
    daemon = m._daemons["t"]
    proc, private_dir = daemon.proc, daemon.dir
    assert proc is not None and proc.poll() is None and private_dir and os.path.isdir(private_dir)
    m.close()
    assert proc.poll() is not None, "the spawned virtiofsd outlived the machine"
    assert not os.path.exists(private_dir)


def test_a_spawned_daemon_that_dies_before_accepting_is_one_line(tmp_path, monkeypatch):
    fake_daemon(tmp_path, monkeypatch, "echo 'bad shared dir' >&2; exit 3")
    d = Virtiofsd("t", str(tmp_path)).spawn()
    with pytest.raises(PyvmmError) as e:
        d.wait_ready()
    assert str(e.value) == "--fs tag=t: virtiofsd exited with status 3: bad shared dir"
    assert d.dir is None  # its private directory went with it

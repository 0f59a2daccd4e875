"""When a session starts reading console input: a booted machine's once its
vCPUs run (the build is not held up by the reader's thread; the guest cannot
tell), a restored one's from the start (Ctrl-A x can stop a long restore).
Pure logic: the machine is a fake that records what it saw."""
import os
import types

import pytest

from pyvmm.machine import MachineConfig, session as session_mod
from pyvmm.machine.config import Outcome
from pyvmm.machine.exit_status import ExitStatus


class FakeMachine:
    seen = []

    def __init__(self, kvm, config, payload, output):
        self.bus = type("Bus", (), {"trace": None})()
        self.dtb = b""
        self.first_run_ns = None

    def _reading(self):
        return FakeMachine.session.console_in._thread is not None

    def build(self):
        FakeMachine.seen.append(("build", self._reading()))

    def console_sink(self):
        return len

    def run(self, on_running=None):
        FakeMachine.seen.append(("run", self._reading()))
        on_running()
        FakeMachine.seen.append(("running", self._reading()))
        return Outcome(ExitStatus.POWEROFF, "powered off")

    def close(self):
        pass


@pytest.mark.parametrize("restore", [False, True])
def test_console_input_is_read_once_the_vcpus_run_or_from_the_start_of_a_restore(monkeypatch, restore):
    monkeypatch.setattr(session_mod, "Machine", FakeMachine)
    FakeMachine.seen = []
    r, w = os.pipe()
    try:
        first_build = (lambda m: FakeMachine.seen.append(("build", m._reading()))) if restore else None
        payload = types.SimpleNamespace(close=lambda: None)  # a stand-in: the fake machine loads nothing
        s = session_mod.Session(MachineConfig(kernel="Image"), lambda data: None, input_fd=r, kvm=object(),
                                payload=payload, first_build=first_build)
        FakeMachine.session = s
        assert s.run().status == ExitStatus.POWEROFF
    finally:
        os.close(w)
        os.close(r)
    assert FakeMachine.seen == [("build", restore), ("run", restore), ("running", True)]

"""The library's public surface (pyvmm.api, re-exported by ``import pyvmm``)
on any host: every public name resolves and is documented, none is shadowed
by a subpackage, ``import pyvmm`` stays light, errors come back in the
caller's thread with nothing left running, and the kick signal's handler
can be installed from a thread that is not the main one."""
import inspect
import os
import platform
import signal
import subprocess
import sys
import threading

import pytest

import pyvmm
from pyvmm import _threads, api

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = os.path.join(ROOT, "pyvmm")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_the_package_exports_the_api_names():
    assert set(pyvmm.__all__) == set(api.__all__) | {"__version__"}
    for name in api.__all__:
        assert getattr(pyvmm, name) is getattr(api, name), name


def test_no_public_name_is_a_subpackage_or_module():
    # pyvmm.boot (the package) once hid a boot() function: the names must stay apart
    for name in pyvmm.__all__:
        assert not os.path.exists(os.path.join(PKG, name)) and not os.path.exists(os.path.join(PKG, name + ".py")), name
    p = _python("import pyvmm.boot.layout, pyvmm.snapshot.format, pyvmm\n"
                "assert callable(pyvmm.start) and callable(pyvmm.restore), (pyvmm.start, pyvmm.restore)")
    assert p.returncode == 0, p.stderr


def test_every_public_name_and_method_has_a_docstring():
    for name in api.__all__:
        obj = getattr(api, name)
        assert inspect.getdoc(obj), name
    for name, member in inspect.getmembers(api.VirtualMachine):
        if not name.startswith("_"):
            assert inspect.getdoc(member), f"VirtualMachine.{name}"


def test_import_pyvmm_loads_the_api_only_when_used():
    p = _python("import sys, pyvmm\nassert 'pyvmm.api' not in sys.modules and 'pyvmm.machine' not in sys.modules\n"
                "pyvmm.MachineConfig\nassert 'pyvmm.api' in sys.modules")
    assert p.returncode == 0, p.stderr


def _errors_in_a_thread(fn):
    """Run ``fn`` in a thread that is not the main one; return what it raised."""
    caught = []

    def body():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            caught.append(e)
    before = set(threading.enumerate())
    t = threading.Thread(target=body)
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert set(threading.enumerate()) == before, "threads left behind"
    assert _threads.alive() == [], "pyvmm threads left behind"
    return caught[0] if caught else None


def test_start_refuses_bad_input_in_the_callers_thread(tmp_path):
    e = _errors_in_a_thread(lambda: pyvmm.start(pyvmm.MachineConfig(firmware=str(tmp_path / "none.bin"))))
    assert isinstance(e, pyvmm.UsageProblem) and "none.bin" in str(e), e
    e = _errors_in_a_thread(lambda: pyvmm.start(pyvmm.MachineConfig(cpus=0, firmware="x")))
    assert isinstance(e, pyvmm.UsageProblem) and "--cpus 0" in str(e), e


@pytest.mark.skipif(platform.machine() in ("aarch64", "arm64"), reason="checks the refusal on a host without arm64 KVM")
def test_start_on_a_host_without_arm64_kvm_is_host_unsupported(tmp_path):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(bytes.fromhex("00000014"))
    e = _errors_in_a_thread(lambda: pyvmm.start(pyvmm.MachineConfig(firmware=str(fw), mem=64 << 20)))
    assert isinstance(e, pyvmm.HostUnsupported) and "not arm64" in str(e), e


def test_restore_refuses_a_damaged_file_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"PYVMMSNP" + bytes(64))
    e = _errors_in_a_thread(lambda: pyvmm.restore(str(bad)))
    assert isinstance(e, pyvmm.SnapshotError), e
    e = _errors_in_a_thread(lambda: pyvmm.restore(str(bad), clock="later"))
    assert isinstance(e, pyvmm.UsageProblem) and "hide or keep" in str(e), e


def test_the_kick_handler_installs_from_another_thread_and_keeps_an_existing_one():
    # SIGUSR1 without a handler ends a process; after ensure_handler (called
    # from a thread that is not the main one) it is harmless.
    p = _python("import os, signal, threading, time\n"
                "from pyvmm.machine import kick\n"
                "assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL\n"
                "t = threading.Thread(target=kick.ensure_handler); t.start(); t.join()\n"
                "os.kill(os.getpid(), signal.SIGUSR1); time.sleep(0.2); print('alive')")
    assert p.returncode == 0 and p.stdout.strip() == "alive", (p.returncode, p.stderr)
    # A handler already there (the caller's, in Python) stays and still runs.
    p = _python("import os, signal, threading, time\n"
                "from pyvmm.machine import kick\n"
                "seen = []\n"
                "signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))\n"
                "t = threading.Thread(target=kick.ensure_handler); t.start(); t.join()\n"
                "os.kill(os.getpid(), signal.SIGUSR1); time.sleep(0.2)\n"
                "assert seen == [signal.SIGUSR1], seen; print('kept')")
    assert p.returncode == 0 and p.stdout.strip() == "kept", (p.returncode, p.stderr)
    # Without it the same signal ends the process: the check above could fail.
    p = _python("import os, signal, time\nos.kill(os.getpid(), signal.SIGUSR1); time.sleep(0.2); print('alive')")
    assert p.returncode == -signal.SIGUSR1

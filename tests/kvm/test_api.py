"""The library surface (pyvmm.api) on real KVM, driven from a thread that is
not the main one, in a fresh interpreter whose SIGUSR1 has no handler: boot,
pause a guest spinning in a loop (so only the kick signal can stop it),
read and write registers and vector state, snapshot, restore into a new
machine, compare, resume, stop, and nothing left behind."""
import base64
import json
import os
import subprocess
import sys

import pytest

from support.run_support import CHECKOUT, guest_files

pytestmark = pytest.mark.kvm

# add x5, x5, #1 ; b .-4  (counts in X5 for ever, never leaving the guest)
COUNTER = bytes.fromhex("a5040091ffffff17")

PRELUDE = f"""
import dataclasses, json, os, signal, sys, threading, time, traceback
sys.path.insert(0, {CHECKOUT!r})
import pyvmm
from pyvmm import _threads
assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL, "the test needs SIGUSR1 without a handler"
result = {{}}

def in_a_thread(fn):
    def body():
        try:
            fn()
            result["ok"] = True
        except BaseException:
            result["error"] = traceback.format_exc()
    t = threading.Thread(target=body, name="not-main")
    t.start()
    t.join(900)
    result.setdefault("error", "the scenario did not finish") if t.is_alive() else None
    result["threads_left"] = [x.name for x in threading.enumerate() if x is not threading.main_thread()] + _threads.alive()
    print(json.dumps(result))
"""


def _run(script: str, tmp_path, timeout=1200):
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    p = subprocess.run([sys.executable, "-c", PRELUDE + script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr[-3000:]}"
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert "error" not in result, result["error"]
    assert result["threads_left"] == [], result
    return result


def test_bare_metal_pause_snapshot_restore_from_a_thread(tmp_path):
    (tmp_path / "counter.bin").write_bytes(COUNTER)
    r = _run("""
def scenario():
    config = pyvmm.MachineConfig(firmware="counter.bin", mem=64 << 20, cpus=2)
    with pyvmm.start(config) as vm:
        assert vm.running and not vm.paused
        time.sleep(0.5)
        vm.pause()                                   # the guest never exits: only the kick stops it
        x5 = vm.get_register(0, "X5")
        pc = vm.get_register(0, "PC")
        assert x5 > 0, x5
        time.sleep(0.3)
        assert vm.get_register(0, "X5") == x5        # paused means paused
        vec = vm.vector_state(0)
        z7 = bytes((i * 7 + 1) & 0xFF for i in range(len(vec.registers["Z7"])))
        vm.set_vector_state(0, dataclasses.replace(vec, registers={**vec.registers, "Z7": z7}))
        assert vm.vector_state(0).registers["Z7"] == z7
        vm.set_register(0, "X6", 0xFEEDC0DE)
        report = vm.snapshot("vm.snap")
        assert vm.paused and report.state == "paused" and report.bytes == os.path.getsize("vm.snap")
        assert os.stat("vm.snap").st_mode & 0o777 == 0o600
        vm.resume()
        time.sleep(0.3)
        vm.pause()
        assert vm.get_register(0, "X5") > x5         # it ran on after the snapshot
        vm.resume()
        try:
            vm.get_register(0, "X5")
            raise AssertionError("registers were readable while running")
        except pyvmm.UsageProblem as e:
            assert "pause()" in str(e)
    assert not vm.running
    result.update(x5=x5, pc=pc)

    with pyvmm.restore("vm.snap", paused=True) as again:
        assert again.paused
        assert again.get_register(0, "X5") == x5
        assert again.get_register(0, "PC") == pc
        assert again.get_register(0, "X6") == 0xFEEDC0DE
        assert again.vector_state(0).registers["Z7"] == z7
        assert again.vector_state(0).registers == {**vec.registers, "Z7": z7}
        again.resume()
        time.sleep(0.3)
        again.pause()
        result["restored_x5_later"] = again.get_register(0, "X5")
        again.resume()
        assert again.wait(timeout=0.2) is None       # still running
        again.stop()
        outcome = again.wait(timeout=60)
        assert outcome is not None and outcome.status == pyvmm.ExitStatus.POWEROFF, outcome
        result["reason"] = outcome.reason

in_a_thread(scenario)
""", tmp_path)
    assert r["restored_x5_later"] > r["x5"]
    assert r["pc"] in (0x4000_0000, 0x4000_0004)
    assert r["reason"] == "stopped through the library"


def test_boot_errors_come_back_in_the_callers_thread(tmp_path):
    r = _run("""
def scenario():
    try:
        pyvmm.start(pyvmm.MachineConfig(firmware="missing.bin"))
        raise AssertionError("booted without firmware")
    except pyvmm.UsageProblem as e:
        result["error_text"] = str(e)
    (open("v.snap", "wb")).write(b"PYVMMSNP" + bytes(100))
    try:
        pyvmm.restore("v.snap")
        raise AssertionError("restored a damaged snapshot")
    except pyvmm.SnapshotError as e:
        result["snap_text"] = str(e)

in_a_thread(scenario)
""", tmp_path)
    assert "missing.bin" in r["error_text"]
    assert "checksum" in r["snap_text"] or "invalid" in r["snap_text"]


def test_linux_guest_snapshot_and_restore_through_the_api(tmp_path):
    kernel, initrd = guest_files()
    cmd = base64.b64encode(b"echo api-guest-up; sleep 600").decode()
    r = _run(f"""
NAMES = [f"X{{n}}" for n in range(31)] + ["SP", "PC", "PSTATE", "SP_EL1", "ELR_EL1", "TPIDR_EL1", "SCTLR_EL1", "TTBR1_EL1"]

def scenario():
    config = pyvmm.MachineConfig(kernel={kernel!r}, initrd={initrd!r}, cpus=2, mem=256 << 20,
                                 cmdline="quiet pyvmm.cmd={cmd}")
    with pyvmm.start(config) as vm:
        deadline = time.monotonic() + 300
        while b"api-guest-up" not in vm.console_output():
            assert vm.running, vm.console_output()[-2000:]
            assert time.monotonic() < deadline, vm.console_output()[-2000:]
            time.sleep(0.2)
        vm.pause()
        saved = [{{n: vm.get_register(i, n) for n in NAMES}} for i in range(2)]
        vec = [vm.vector_state(i).registers for i in range(2)]
        vm.snapshot("linux.snap")
    with pyvmm.restore("linux.snap", paused=True) as again:
        restored = [{{n: again.get_register(i, n) for n in NAMES}} for i in range(2)]
        assert restored == saved, [(i, n) for i in range(2) for n in NAMES if restored[i][n] != saved[i][n]]
        assert [again.vector_state(i).registers for i in range(2)] == vec
        again.resume()
        time.sleep(2)
        assert again.running, again.console_output()[-2000:]
        again.pause()                                # an idle Linux guest (WFI) is kicked too
        again.resume()
    result["pc0"] = saved[0]["PC"]

in_a_thread(scenario)
""", tmp_path)
    assert r["pc0"] >= 0xFFFF_0000_0000_0000  # a kernel address: the guest was in Linux


def test_the_kernel_and_initrd_files_may_change_under_a_running_guest(tmp_path):
    """pyvmm maps the kernel and initrd files over guest RAM at load (start-up
    time) and replaces them by copies of their own once the guest runs: then
    no mapping of either file is left, and truncating them (what ``cp`` over
    them does first) neither crashes pyvmm nor reaches the guest: a snapshot
    reads every page (a truncated file's page still mapped would be SIGBUS)."""
    import shutil

    kernel, initrd = guest_files()
    shutil.copyfile(kernel, tmp_path / "Image")
    shutil.copyfile(initrd, tmp_path / "initrd")
    cmd = base64.b64encode(b"echo files-guest-up; sleep 600").decode()
    r = _run(f"""
def mapped(path):
    with open("/proc/self/maps") as f:
        return path in f.read()

def scenario():
    config = pyvmm.MachineConfig(kernel="Image", initrd="initrd", cpus=2, mem=256 << 20,
                                 cmdline="quiet pyvmm.cmd={cmd}")
    kernel, initrd = os.path.abspath("Image"), os.path.abspath("initrd")
    with pyvmm.start(config) as vm:
        deadline = time.monotonic() + 300
        m = vm._current()                            # the machine (internal): what its copy thread did
        while m.files_copied is None or b"files-guest-up" not in vm.console_output():
            assert vm.running, vm.console_output()[-2000:]
            assert time.monotonic() < deadline, (mapped(kernel), mapped(initrd), vm.console_output()[-2000:])
            time.sleep(0.2)
        assert not mapped(kernel) and not mapped(initrd)
        result["copied"] = m.files_copied
        os.truncate(kernel, 0)
        os.truncate(initrd, 0)
        vm.snapshot("after.snap")                    # reads every page of guest RAM
        time.sleep(1)
        assert vm.running, vm.console_output()[-2000:]

in_a_thread(scenario)
""", tmp_path)
    size = os.path.getsize(kernel) + os.path.getsize(initrd)
    copied, seconds = r["copied"]
    assert size <= copied < size + 2 * 4096 * 2, (copied, size)  # each file to its page end
    assert seconds < 10, seconds

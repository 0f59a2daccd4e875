"""A hostile guest against `pyvmm run` on real KVM (issue 14 #2): one notify
of 3 GiB of virtio-console chains from a 64 MiB guest is streamed out with
pyvmm's resident memory bounded (it died of MemoryError or the OOM killer
when the device gathered the chains)."""
import os
import subprocess
import sys
import time

import pytest

from support import guestbuild
from support.run_support import CHECKOUT

pytestmark = pytest.mark.kvm

MiB = 1 << 20
FLOOD_BYTES = 24 * 2 * 63 * MiB  # guests/baremetal/virtio_flood.s


def _hwm(pid):
    """Peak resident set of ``pid`` in bytes (VmHWM), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def test_console_flood_is_streamed_with_rss_bounded(tmp_path):
    fw = tmp_path / "flood.bin"
    fw.write_bytes(guestbuild.build("virtio_flood"))
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    p = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "--firmware", str(fw), "-m", "64M",
                          "--console", "virtio", "--debug"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=CHECKOUT)
    peak = 0
    deadline = time.monotonic() + 600
    while p.poll() is None:
        value = _hwm(p.pid)
        peak = max(peak, value or 0)
        assert time.monotonic() < deadline, "the flood did not finish within 600 s"
        time.sleep(0.05)
    err = p.stderr.read().decode()
    assert p.returncode == 0, err
    assert f"console {FLOOD_BYTES} bytes" in err, err  # all 3 GiB went out
    print(f"pyvmm peak RSS during the 3 GiB flood: {peak / MiB:.1f} MiB")
    assert 0 < peak < 200 * MiB, f"pyvmm's peak RSS was {peak / MiB:.0f} MiB"

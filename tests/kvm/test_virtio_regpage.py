"""The virtio-mmio register page on real KVM: a bare-metal guest
(guests/baremetal/regpage_probe.s, virtio-rng in slot 0) reads the device's
registers, InterruptStatus 200 times, without one MMIO exit for a read
(``--debug`` traces every MMIO exit per register), and reads the values a
register read returns, also after its own writes. The same guest with
``PYVMM_VIRTIO_REGPAGE=0`` exits for every read and reads the same values."""
import os
import re

import pytest

from support import guestbuild
from support.run_support import pyvmm

pytestmark = pytest.mark.kvm

MAGIC, VERSION, RNG_ID = 0x74726976, 2, 4
READS = 200


def run_probe(tmp_path, regpage: str):
    fw = tmp_path / "regpage_probe.bin"
    fw.write_bytes(guestbuild.build("regpage_probe"))
    old = os.environ.get("PYVMM_VIRTIO_REGPAGE")
    os.environ["PYVMM_VIRTIO_REGPAGE"] = regpage
    try:
        r = pyvmm("run", "--firmware", fw, "-m", "64M", "-c", "1", "--debug", timeout=600)
    finally:
        if old is None:
            del os.environ["PYVMM_VIRTIO_REGPAGE"]
        else:
            os.environ["PYVMM_VIRTIO_REGPAGE"] = old
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err
    values = [int(w, 16) for w in r.stdout.decode().split() if len(w) == 16]
    state = re.search(r"virtio register page \(reads without exits\): (.*)", err)
    assert state, err
    # "busiest MMIO registers: virtio-rng+0x60 r 201, ..." (the 8 busiest)
    busiest = re.search(r"busiest MMIO registers: (.*)", err)
    reads = {}
    for dev, off, rw, n in re.findall(r"(\S+)\+(0x[0-9a-f]+) ([rw]) (\d+)", busiest.group(1) if busiest else ""):
        if dev.startswith("virtio") and rw == "r":
            reads[int(off, 16)] = int(n)
    return values, state.group(1), reads, err


def test_register_reads_take_no_exit_and_read_right(tmp_path):
    values, state, reads, err = run_probe(tmp_path, "1")
    if state != "on":
        pytest.skip(f"the register page is off on this host: {state}")
    assert values == [MAGIC, VERSION, RNG_ID, 0, 0, 1, 1], err
    assert reads == {}, f"virtio register reads exited: {reads}"


def test_forced_off_exits_for_every_read_with_the_same_values(tmp_path):
    values, state, reads, err = run_probe(tmp_path, "0")
    assert state == "off: PYVMM_VIRTIO_REGPAGE=0"
    assert values == [MAGIC, VERSION, RNG_ID, 0, 0, 1, 1], err
    assert reads.get(0x60, 0) == READS + 1, reads

"""The snapshot file format: round trips, and every kind of damage refused."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.arm64 import regs
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import memory_image, vcpu_state


def _sample():
    state = vcpu_state.VcpuState(0, [2, 4], sve_vls=[1, 2, 4], svcr=0,
                                 registers=[(regs.core("X0"), (42).to_bytes(8, "little")),
                                            (regs.sve_z(3), bytes(range(256))),
                                            (regs.core("FPSR"), bytes(4))],
                                 mp_state=0, events=bytes(64), saved_at_ns=1)
    mem = bytearray(64 * 4096)
    mem[5 * 4096:5 * 4096 + 5] = b"hello"
    blob, stored = memory_image.pack(mem)
    manifest = {"kind": "baremetal", "created_by": "test", "host": {"machine": "x", "kernel": "y"},
                "machine": {"cntfrq": 62500000, "gic": None, "sme_bit": None, "features": [2, 4],
                            "memory": [{"slot": 0, "gpa": 0x80000000, "size": len(mem), "blob": "ram0",
                                        "stored_pages": stored}]},
                "vcpus": [state.to_json()]}
    return fmt.Snapshot(manifest, {"vcpu0.regs": state.registers_blob(), "ram0": blob})


def test_round_trip_and_zero_pages_skipped():
    data = fmt.encode(_sample())
    snap = fmt.decode(data)
    assert snap.manifest["machine"]["memory"][0]["stored_pages"] == 1
    assert len(snap.blobs["ram0"]) == 8 + 4096  # bitmap of 64 pages + one page
    state = vcpu_state.VcpuState.from_json(snap.manifest["vcpus"][0], snap.blobs["vcpu0.regs"])
    assert state.register_map()[regs.sve_z(3)] == bytes(range(256))


@pytest.mark.parametrize("cut", range(32))
def test_truncation_is_refused(cut):
    data = fmt.encode(_sample())
    point = (len(data) - 1) * cut // 31
    with pytest.raises(fmt.SnapshotError) as info:
        fmt.decode(data[:point])
    assert "truncated" in str(info.value) or "checksum" in str(info.value)


def test_a_thousand_random_bit_flips_are_refused():
    data = fmt.encode(_sample())
    rng = random.Random(1234)
    for _ in range(1000):
        pos = rng.randrange(len(data))
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(fmt.SnapshotError):
            fmt.decode(bytes(bad))


def test_newer_version_is_refused_with_upgrade_hint():
    data = bytearray(fmt.encode(_sample()))
    data[8:12] = (fmt.FORMAT_VERSION + 1).to_bytes(4, "little")
    with pytest.raises(fmt.SnapshotError, match="newer.*upgrade pyvmm"):
        fmt.decode(bytes(data))


def test_altered_checksum_is_refused():
    data = bytearray(fmt.encode(_sample()))
    data[-1] ^= 0xFF
    with pytest.raises(fmt.SnapshotError, match="checksum"):
        fmt.decode(bytes(data))


def test_not_a_snapshot():
    with pytest.raises(fmt.SnapshotError, match="not a pyvmm snapshot"):
        fmt.decode(b"\x7fELF" + bytes(100))


def test_written_atomically_with_mode_0600(tmp_path):
    path = tmp_path / "a.snap"
    fmt.save(str(path), _sample())
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert fmt.load(str(path)).manifest["kind"] == "baremetal"
    assert [p.name for p in tmp_path.iterdir()] == ["a.snap"]


def test_sigkill_while_writing_leaves_the_previous_snapshot_intact(tmp_path):
    """20 writers killed at random moments: the file is always the old
    snapshot or a complete new one, never a partial write."""
    path = tmp_path / "s.snap"
    fmt.save(str(path), _sample())
    writer = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))!r})
        from pyvmm.snapshot import format as fmt
        big = fmt.Snapshot({{"kind": "big", "machine": {{}}, "vcpus": []}}, {{"blob": os.urandom(48 << 20)}})
        print("ready", flush=True)
        while True:
            fmt.save({str(path)!r}, big)
    """)
    rng = random.Random(99)
    for _ in range(20):
        p = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait()
        snap = fmt.load(str(path))  # raises if partial
        assert snap.manifest["kind"] in ("baremetal", "big")
    for leftover in tmp_path.iterdir():  # temporary files are the only debris allowed
        if leftover.name != "s.snap":
            assert leftover.name.startswith(".s.snap.tmp-")


@given(st.lists(st.tuples(st.integers(0, 63), st.binary(min_size=1, max_size=64)), max_size=20))
@settings(max_examples=300)
def test_memory_image_round_trip(writes):
    mem = bytearray(64 * 4096)
    for page, data in writes:
        mem[page * 4096:page * 4096 + len(data)] = data
    blob, stored = memory_image.pack(mem)
    out = bytearray(len(mem))

    def put(off, page):
        out[off:off + len(page)] = page

    assert memory_image.unpack_into(blob, len(mem), put) == stored
    assert out == mem


def test_memory_blob_with_wrong_length_is_refused():
    blob, _ = memory_image.pack(bytearray(8 * 4096))
    with pytest.raises(ValueError):
        memory_image.unpack_into(blob + b"x", 8 * 4096, lambda *a: None)


@pytest.mark.parametrize("svcr", [0, 1, 2, 3])
def test_restore_order_puts_svcr_before_vector_state(svcr):
    ids = [regs.core("X0"), regs.core("FPSR"), regs.core("FPCR"), regs.sve_z(0), regs.sve_p(0),
           regs.sve_ffr(), regs.sme_za_row(0), regs.sme_zt(0), regs.SVCR, regs.FPMR,
           regs.ID_AA64PFR1_EL1, regs.sysreg_named("TPIDR_EL1")]
    state = vcpu_state.VcpuState(0, [2, 4, 10], [1], [1, 2], svcr,
                                 [(i, bytes(regs.size_of(i))) for i in ids])
    steps = vcpu_state.restore_order(state, sme_bit=10)
    order = [i for _, group in steps for i in group]
    assert order.index(regs.ID_AA64PFR1_EL1) < order.index(regs.SVCR)
    assert order.index(regs.SVCR) < order.index(regs.core("FPSR")) < order.index(regs.sve_z(0))
    assert order.index(regs.FPMR) < order.index(regs.sve_z(0))
    za_written = regs.sme_za_row(0) in order
    assert za_written == bool(svcr & 2)

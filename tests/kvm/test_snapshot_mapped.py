"""Snapshot format version 2 through the CLI on real KVM (issue 13, item 4),
with a tiny bare-metal payload so that no Linux boot is needed: the file's
guest RAM is mapped by ``pyvmm restore`` and the guest runs; a chunk
damaged after the save stops the restored VM with the reason (its CRC-32 is
checked while the guest runs), and ``restore --verify`` / ``inspect
--verify`` refuse it before anything runs."""
import shutil
import signal
import time

import pytest

from pyvmm.snapshot import format as fmt
from support.run_support import Running, print_then, pyvmm, wait_ready

pytestmark = pytest.mark.kvm


def test_mapped_restore_runs_and_a_damaged_chunk_is_caught(tmp_path):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(print_then(b"spinning\n", None))  # prints, then spins at a branch to itself
    sock, sock2, snap = tmp_path / "run.sock", tmp_path / "restore.sock", tmp_path / "vm.snap"
    vm = Running(["run", "--firmware", fw, "-m", "64M", "--control", sock])
    vm.wait_for(b"spinning\n")
    r = pyvmm("snapshot", sock, snap, "--stop", timeout=120)
    assert r.returncode == 0, r.stderr
    vm.wait_exit(60)
    loaded = fmt.load(str(snap))
    assert loaded.manifest["format_version"] == 3
    image = loaded.blobs["ram0"]
    assert image.stored >= 2 and image.stored < 64  # the payload's chunk and the DTB's, not the zero ones
    first = list(image.runs())[0]
    assert first[0] == 0  # chunk 0 (the payload at the RAM base) is stored
    loaded.close()

    # Restored from the mapped file: it runs, and says nothing about reading memory.
    back = Running(["restore", snap, "--control", sock2])
    assert wait_ready(sock2)["state"] == "running"
    time.sleep(2)  # the background check runs meanwhile; an intact file does not stop the VM
    assert wait_ready(sock2)["state"] == "running"
    took, err = back.stop(signal.SIGTERM)
    assert back.p.returncode == 143, err
    assert b"not mapped" not in err and b"CRC" not in err, err

    # One byte of chunk 0 changed after the save, away from the payload's code: the
    # guest runs on it, and the check that runs beside it stops the VM, saying why.
    bad = tmp_path / "bad.snap"
    shutil.copyfile(snap, bad)
    with open(bad, "r+b") as f:
        f.seek(fmt.DATA_START + 600 * 1024)
        f.write(b"\x5a")
    r = pyvmm("restore", bad, timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "memory chunk 0 " in err and "fails its CRC-32" in err and "the VM was stopped" in err, err
    # --verify refuses it before anything runs (a damaged file: exit 2); so does inspect --verify
    r = pyvmm("restore", bad, "--verify", timeout=300)
    assert r.returncode == 2 and r.stdout == b"" and "fails its CRC-32" in r.stderr.decode(), r.stderr
    assert r.stderr.decode().count("\n") == 1
    r = pyvmm("inspect", "--verify", bad, timeout=300)
    assert r.returncode == 2 and "memory chunk 0 " in r.stderr.decode(), r.stderr
    r = pyvmm("inspect", "--verify", snap, timeout=300)
    assert r.returncode == 0 and "verified: every memory chunk matches its CRC-32" in r.stdout.decode(), r.stderr

"""Incremental snapshots (format version 3, pyvmm/snapshot/chain.py): chains
built from the dirty log, restored byte for byte like a full snapshot taken
at the same moment, and every refusal. Real files, real mappings and real
guest RAM; the VM is a fake (named: FakeDirtyVm answers KVM's dirty log
from the pages the test says the guest wrote; real dirty logging is
tests/kvm/test_snapshot_linux.py -k since)."""
import os
import random
import struct
import threading

import pytest

from click.testing import CliRunner

from pyvmm.cli import cli
from pyvmm.control import ControlError
from pyvmm.control import handler as live
from pyvmm.errors import SnapshotError, UsageProblem
from pyvmm.machine import Machine
from pyvmm.memory import GuestMemory
from pyvmm.snapshot import chain
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import machine_snapshot as ms
from pyvmm.snapshot import manifest, ram_image

from support.fake_dirty_vm import FakeDirtyVm

MiB = 1 << 20
PAGE = 4096
GPA = 0x4000_0000


class TrackedMachine:
    """What save_live and the chain logic use of a machine (a fake, no VM):
    real guest RAM (a GuestMemory region without a memory slot) and a fake
    VM fd for the dirty log. :meth:`guest_write` is a store by the guest
    (KVM would log it), ``mem.write`` one by a device model."""

    transports = Machine.transports

    def __init__(self, size=8 * MiB, seed=1):
        self.mem = GuestMemory()
        self.region = self.mem.add(GPA, size)
        self.vm = FakeDirtyVm()
        self.owned, self.virtio = [], []
        self.pci_virtio, self.pci = [], None  # as Machine's (no PCI device)
        self.paused = False
        self.io_lock = threading.RLock()
        self.rnd = random.Random(seed)
        for off in (0, 3 * PAGE, MiB + 200 * PAGE, 5 * MiB - PAGE):
            self.region.mm[off:off + PAGE] = self.rnd.randbytes(PAGE)

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False

    def finish(self, status, reason):
        pass

    def guest_write(self, off, data):
        self.region.mm[off:off + len(data)] = data
        self.vm.guest_writes(0, *range(off // PAGE, (off + len(data) - 1) // PAGE + 1))

    def memory(self) -> bytes:
        return bytes(self.region.mm)


def _take(m, progress=None, memory=True):
    blobs, regions = manifest.pack_ram(m.mem)
    return fmt.Snapshot({"kind": "test", "machine": {"memory": regions}}, blobs)


@pytest.fixture(autouse=True)
def fake_take(monkeypatch):
    monkeypatch.setattr(ms, "_take", _take)


def full_copy(m, path):
    """A plain full snapshot of ``m`` now, outside the chain (the reference)."""
    fmt.save(str(path), _take(m))
    return str(path)


def restored(path) -> bytes:
    snap = fmt.load(str(path))
    try:
        region = snap.manifest["machine"]["memory"][0]
        mem = GuestMemory()
        mem.add(GPA, region["size"])
        assert manifest.unpack_ram(snap, region, mem) == "mapped"
        assert snap.verify_ram() is None
        return bytes(mem.regions[0].mm)
    finally:
        snap.close()


def test_a_chain_restores_byte_for_byte_like_a_full_snapshot(tmp_path):
    m = TrackedMachine()
    r0 = ms.save_live(m, str(tmp_path / "s0"))
    assert r0.parent is None and m.paused is False
    # the guest writes in chunks 1 and 7; a device model (mem.write) in chunk 3
    m.guest_write(MiB + 5 * PAGE, m.rnd.randbytes(3 * PAGE))
    m.guest_write(7 * MiB, m.rnd.randbytes(MiB))
    m.mem.write(GPA + 3 * MiB + 9 * PAGE, b"device wrote this")
    r1 = ms.save_live(m, str(tmp_path / "s1"), since=str(tmp_path / "s0"))
    assert r1.parent == "s0"
    # the changed chunks alone are in s1: 1, 3 and 7
    s1 = fmt.load_one(str(tmp_path / "s1"))
    assert [i for i, k in enumerate(s1.blobs["ram0"].slots) if k >= 0] == [1, 3, 7]
    assert s1.manifest["chain"]["parent"]["path"] == "s0" and s1.manifest["chain"]["depth"] == 1
    s1.close()
    # then chunk 0 is written all zero (dirty, now a zero chunk: not the parent's bytes) and chunk 1 again
    m.guest_write(0, bytes(MiB))
    m.guest_write(MiB + 5 * PAGE, b"\x5a" * PAGE)
    ms.save_live(m, str(tmp_path / "s2"), since=str(tmp_path / "s1"))
    reference = full_copy(m, tmp_path / "full")
    assert restored(tmp_path / "s2") == restored(reference) == m.memory()
    assert restored(tmp_path / "s1") != m.memory()  # the middle of the chain is its own moment
    # each file is smaller than a full one: only what changed
    assert os.path.getsize(tmp_path / "s2") < os.path.getsize(reference)


def test_every_chunk_is_checked_against_the_file_that_holds_it(tmp_path):
    m = TrackedMachine()
    ms.save_live(m, str(tmp_path / "s0"))
    m.guest_write(7 * MiB, b"\x11" * PAGE)
    ms.save_live(m, str(tmp_path / "s1"), since=str(tmp_path / "s0"))
    # damage chunk 4 in the parent (s1 inherits it)
    s0 = fmt.load_one(str(tmp_path / "s0"))
    image = s0.blobs["ram0"]
    at = image.data_offset + image.slots[4] * ram_image.CHUNK + MiB - PAGE
    s0.close()
    with open(tmp_path / "s0", "r+b") as f:
        f.seek(at)
        f.write(b"\xff")
    snap = fmt.load(str(tmp_path / "s1"))
    assert snap.verify_ram().startswith("memory chunk 4 (")
    snap.close()


def test_a_failed_write_loses_no_dirty_page(tmp_path, monkeypatch):
    m = TrackedMachine()
    ms.save_live(m, str(tmp_path / "s0"))
    m.guest_write(2 * MiB, b"\x22" * PAGE)
    real_save = fmt.save

    def failing(*args, **kwargs):
        raise fmt.WriteError("cannot write: No space left on device")
    monkeypatch.setattr(fmt, "save", failing)
    with pytest.raises(fmt.WriteError):
        ms.save_live(m, str(tmp_path / "s1"), since=str(tmp_path / "s0"))
    assert not m.paused
    monkeypatch.setattr(fmt, "save", real_save)
    ms.save_live(m, str(tmp_path / "s1"), since=str(tmp_path / "s0"))  # s0 is still the base
    assert restored(tmp_path / "s1") == m.memory()


def test_a_full_snapshot_starts_a_new_base(tmp_path):
    m = TrackedMachine()
    ms.save_live(m, str(tmp_path / "a0"))
    m.guest_write(6 * MiB, b"\x66" * PAGE)
    ms.save_live(m, str(tmp_path / "b0"))  # full again
    m.guest_write(4 * MiB, b"\x44" * PAGE)
    with pytest.raises(UsageProblem, match=r"it is not this VM's latest snapshot \(.*b0\)"):
        ms.save_live(m, str(tmp_path / "a1"), since=str(tmp_path / "a0"))
    ms.save_live(m, str(tmp_path / "b1"), since=str(tmp_path / "b0"))
    assert restored(tmp_path / "b1") == m.memory()


def _chain(tmp_path, n, m=None):
    m = m or TrackedMachine()
    ms.save_live(m, str(tmp_path / "s0"))
    for i in range(1, n):
        m.guest_write(i * PAGE, bytes([i]) * PAGE)
        ms.save_live(m, str(tmp_path / f"s{i}"), since=str(tmp_path / f"s{i - 1}"))
    return m


def test_restore_refuses_a_missing_parent(tmp_path):
    _chain(tmp_path, 3)
    os.unlink(tmp_path / "s1")
    with pytest.raises(SnapshotError, match=r"s2 is incremental, and its parent .*/s1 does not exist"):
        fmt.load(str(tmp_path / "s2"))


def test_restore_refuses_a_changed_parent(tmp_path):
    m = _chain(tmp_path, 2)
    full_copy(m, tmp_path / "s0")  # another valid snapshot under the parent's name
    with pytest.raises(SnapshotError, match=r"parent .*/s0 changed after s1 was taken from it"):
        fmt.load(str(tmp_path / "s1"))


def test_restore_refuses_a_parent_of_another_version(tmp_path):
    m = _chain(tmp_path, 2)
    blobs, regions = manifest.pack_ram(m.mem)
    fmt.save(str(tmp_path / "s0"), fmt.Snapshot({"kind": "test", "machine": {"memory": regions}}, blobs), version=2)
    with pytest.raises(SnapshotError, match="parent .*/s0 has format version 2; every file of a chain is version 3"):
        fmt.load(str(tmp_path / "s1"))


def _linked(path, parent_name, head="0" * 64, depth=1, lineage="ab" * 16, changed=None, m=None):
    """A version-3 file naming ``parent_name`` whatever that is (a crafted chain)."""
    m = m or TrackedMachine()
    snap = _take(m)
    snap.manifest["chain"] = {"lineage": lineage, "depth": depth,
                              "parent": {"path": parent_name, "head_sha256": head}}
    snap.changed = changed if changed is not None else {"ram0": set()}
    fmt.save(str(path), snap)
    return snap.head_sha256


def test_restore_refuses_a_loop(tmp_path):
    _linked(tmp_path / "self.snap", "self.snap")
    with pytest.raises(SnapshotError, match=r"self.snap's chain loops: .*self.snap is its own ancestor"):
        fmt.load(str(tmp_path / "self.snap"))
    # two files naming each other: their digests cannot both match, so the first link already fails
    _linked(tmp_path / "a", "b", depth=2)
    _linked(tmp_path / "b", "a", depth=1)
    with pytest.raises(SnapshotError, match="parent .*/b changed after a was taken from it"):
        fmt.load(str(tmp_path / "a"))


def test_restore_refuses_another_lineage_or_depth(tmp_path):
    m = _chain(tmp_path, 1)
    head = fmt.load_one(str(tmp_path / "s0")).head_sha256
    _linked(tmp_path / "x", "s0", head=head, m=m)
    with pytest.raises(SnapshotError, match="s0 was not taken by the same running VM"):
        fmt.load(str(tmp_path / "x"))
    lineage = fmt.load_one(str(tmp_path / "s0")).manifest["chain"]["lineage"]
    _linked(tmp_path / "y", "s0", head=head, depth=2, lineage=lineage, m=m)
    with pytest.raises(SnapshotError, match="s0 is at depth 0 of its chain, not 1"):
        fmt.load(str(tmp_path / "y"))
    _linked(tmp_path / "z", "s0", head=head, depth=1, lineage=lineage, m=m)
    assert restored(tmp_path / "z") == m.memory()  # the same link, right: restored


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(depth=32), r"'depth' must be"),
    (lambda c: c.update(depth=0), "'depth' is 0 and a parent is named"),
    (lambda c: c.update(lineage="XY" * 16), "'lineage' must be 32 lowercase hex digits"),
    (lambda c: c["parent"].update(path="../elsewhere/s0"), "'path' must be a file name in the snapshot's own"),
    (lambda c: c["parent"].update(path="/etc/s0"), "'path' must be a file name"),
    (lambda c: c["parent"].update(head_sha256="00"), "'head_sha256' must be 64 lowercase hex digits"),
    (lambda c: c.update(parent=None), "'depth' is 1 and 'parent' null"),
    (lambda c: c.pop("lineage"), "lacks 'lineage'"),
])
def test_malformed_chain_fields_are_refused(change, message):
    link = {"lineage": "ab" * 16, "depth": 1, "parent": {"path": "s0", "head_sha256": "0" * 64}}
    chain_ok = fmt.check_chain(dict(link), "snapshot x")
    assert chain_ok["depth"] == 1
    bad = {**link, "parent": dict(link["parent"])}
    change(bad)
    with pytest.raises(UsageProblem, match=message):
        fmt.check_chain(bad, "snapshot x")


def test_a_parents_chunk_in_a_file_without_parent_is_refused():
    table = struct.pack("<II", ram_image.IN_PARENT, 0)
    with pytest.raises(ValueError, match="chunk 0 is marked as the parent's, and the file has no parent"):
        ram_image.check_table("ram0", MiB, table, fmt.DATA_START, 0, 1 << 30)
    ram_image.check_table("ram0", MiB, table, fmt.DATA_START, 0, 1 << 30, in_parent=True)


# -- --since refusals (before the guest is paused) ---------------------------------


def _refused(m, tmp_path, out, since, error, message):
    with pytest.raises(error, match=message):
        ms.save_live(m, str(tmp_path / out), since=str(since))
    assert not (tmp_path / out).exists() or out.startswith("s")
    assert not m.paused


def test_since_refusals(tmp_path):
    m = _chain(tmp_path, 3)
    # no such file
    _refused(m, tmp_path, "n", tmp_path / "nope", UsageProblem, r"snapshot .*/nope does not exist")
    # not the latest: the dirty log is relative to s2
    _refused(m, tmp_path, "n", tmp_path / "s1", UsageProblem, r"it is not this VM's latest snapshot \(.*/s2\)")
    # another VM's
    other = TrackedMachine(seed=2)
    ms.save_live(other, str(tmp_path / "o0"))
    _refused(m, tmp_path, "n", tmp_path / "o0", UsageProblem, r"it is not a snapshot of this running VM")
    # OUT would overwrite the chain it extends
    _refused(m, tmp_path, "s2", tmp_path / "s2", UsageProblem, "is the previous snapshot: writing it would destroy")
    _refused(m, tmp_path, "s0", tmp_path / "s2", UsageProblem, "is a parent of .*s2: writing it would destroy")
    # another directory
    (tmp_path / "sub").mkdir()
    _refused(m, tmp_path, "sub/n", tmp_path / "s2", UsageProblem, "must be in the new one's directory")
    # a version-2 file
    fmt.save(str(tmp_path / "v2"), _take(m), version=2)
    _refused(m, tmp_path, "n", tmp_path / "v2", UsageProblem, "it has format version 2; an incremental")
    # a broken chain behind PREVIOUS
    os.rename(tmp_path / "s1", tmp_path / "s1.moved")
    _refused(m, tmp_path, "n", tmp_path / "s2", SnapshotError, "its parent .*/s1 does not exist")
    os.rename(tmp_path / "s1.moved", tmp_path / "s1")
    ms.save_live(m, str(tmp_path / "s3"), since=str(tmp_path / "s2"))  # all refusals left the base as it was
    assert restored(tmp_path / "s3") == m.memory()


def test_since_without_tracking_is_refused(tmp_path):
    m = _chain(tmp_path, 1)
    fresh = TrackedMachine()  # e.g. the same guest restored, or after a reset: a new machine
    _refused(fresh, tmp_path, "n", tmp_path / "s0", UsageProblem, "this VM has taken no snapshot since it started")
    chain.forget(m)  # a live migration was tried: the dirty log was its
    assert m.owned == [] and m.vm.flags == {0: 0}
    _refused(m, tmp_path, "n", tmp_path / "s0", UsageProblem, "this VM has taken no snapshot since")


def test_a_vhost_data_plane_is_refused(tmp_path):
    m = _chain(tmp_path, 1)

    class Plane:
        kernel_queues, snapshot_refusal = True, None

    class Transport:
        backend, base = Plane(), 0xa000000
    m.virtio = [Transport()]
    _refused(m, tmp_path, "n", tmp_path / "s0", UsageProblem, "runs on a vhost data plane")


def test_the_chain_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(chain, "MAX_CHAIN", 3)
    m = _chain(tmp_path, 3)
    _refused(m, tmp_path, "s3", tmp_path / "s2", UsageProblem, "the chain would have 4 files, more than 3")


def test_the_control_request_and_the_cli(tmp_path):
    m = _chain(tmp_path, 1)
    c = live.Controller()
    c.attach(m)
    reply = c.handle({"cmd": "snapshot", "path": str(tmp_path / "s1"), "since": str(tmp_path / "s0")}, lambda _: None)
    assert reply["ok"] and reply["parent"] == "s0"
    with pytest.raises(ControlError, match="since needs an absolute path"):
        c.handle({"cmd": "snapshot", "path": str(tmp_path / "s2"), "since": "s1"}, lambda _: None)
    with pytest.raises(UsageProblem, match="it is not this VM.s latest snapshot"):
        c.handle({"cmd": "snapshot", "path": str(tmp_path / "s2"), "since": str(tmp_path / "s0")}, lambda _: None)
    # the CLI refuses what the files tell before it asks the VM: one line, exit 2
    r = CliRunner().invoke(cli, ["snapshot", str(tmp_path / "no.sock"), str(tmp_path / "s2"),
                                 "--since", str(tmp_path / "missing")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "does not exist" in r.output, r.output


def test_a_parent_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opening it would wait for ever
    _linked(tmp_path / "child", "fifo")
    with pytest.raises(SnapshotError, match="fifo is not a regular file"):
        fmt.load(str(tmp_path / "child"))


def test_inspect_names_the_parent(tmp_path):
    from pyvmm.snapshot import describe

    _chain(tmp_path, 2)
    snap = fmt.load(str(tmp_path / "s1"))
    info = {"format_version": 3, "kind": "test", "created_by": "x", "host": {}, "machine": {}, "memory": [],
            "vcpus": [], "chain": snap.manifest["chain"]}
    assert "chain: incremental, depth 1, parent s0 (SHA-256 " in describe.render_inspect(info)
    snap.close()

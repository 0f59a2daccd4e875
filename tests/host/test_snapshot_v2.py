"""Snapshot format version 2 (docs/snapshot-format.md, "Version 2"): guest RAM
in page-aligned chunks that restore maps copy-on-write. Real files, real
mappings (no VM: the RAM is a :class:`pyvmm.memory.GuestMemory` region
without a memory slot). Mapping restore against a plain read, every
malformed table, offset and chunk refused, old and newer versions."""
import hashlib
import json
import mmap
import os
import random
import struct

import pytest

from pyvmm.memory import GuestMemory
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import manifest, ram_image, trust
from pyvmm.snapshot.machine_snapshot import RamVerifier

from support.snapshots import machine_snapshot

MiB = 1 << 20
GPA = 0x4000_0000


def guest_ram(size=8 * MiB, seed=1):
    """RAM with scattered non-zero pages: chunks 0, 1 (two runs), 5 (its last page), 7 (full)."""
    mem = GuestMemory()
    r = mem.add(GPA, size)
    rnd = random.Random(seed)
    for off in (0, 3 * 4096, MiB + 200 * 4096, 5 * MiB + MiB - 4096):
        r.mm[off:off + 4096] = rnd.randbytes(4096)
    r.mm[7 * MiB:8 * MiB] = rnd.randbytes(MiB)
    return mem


def save(tmp_path, mem, name="vm.snap", seal=None, version=2):
    blobs, regions = manifest.pack_ram(mem)
    blobs["vcpu0.regs"] = b"registers"
    snap = fmt.Snapshot({"kind": "test", "machine": {"memory": regions}}, blobs, seal=seal)
    path = str(tmp_path / name)
    fmt.save(path, snap, version=version)
    return path, regions


def restored(path, shared=False):
    """(GuestMemory restored from ``path``, how)."""
    snap = fmt.load(path)
    region = snap.manifest["machine"]["memory"][0]
    mem = GuestMemory()
    mem.add(GPA, region["size"], shared=shared)
    how = manifest.unpack_ram(snap, region, mem)
    snap.close()
    return mem, how


def test_mapped_restore_is_byte_identical_to_a_plain_read(tmp_path):
    src = guest_ram()
    path, regions = save(tmp_path, src)
    assert regions[0]["stored_pages"] == 4 + 256
    mem, how = restored(path)
    assert how == "mapped"
    assert mem.regions[0].mm[:] == src.regions[0].mm[:]
    # the same file read, not mapped: a RAM shared with a vhost-user daemon (memfd)
    shared, how = restored(path, shared=True)
    assert how.startswith("read: guest RAM is shared with a vhost-user daemon")
    assert shared.regions[0].mm[:] == src.regions[0].mm[:]
    # and as version 1 (page bitmap), the old way
    old, how = restored(save(tmp_path, src, "v1.snap", version=1)[0])
    assert how == "read: format version 1" and old.regions[0].mm[:] == src.regions[0].mm[:]


def test_mapped_memory_is_copy_on_write(tmp_path):
    src = guest_ram()
    path, _ = save(tmp_path, src)
    before = open(path, "rb").read()
    mem, _ = restored(path)
    mem.write(GPA + 7 * MiB, b"guest writes stay private")
    mem.write(GPA + 2 * MiB, b"in a zero chunk too")
    assert open(path, "rb").read() == before
    again, _ = restored(path)
    assert again.regions[0].mm[:] == src.regions[0].mm[:]


def test_zero_chunks_and_pages_take_no_room(tmp_path):
    path, _ = save(tmp_path, guest_ram(64 * MiB))
    snap = fmt.load(path)
    image = snap.blobs["ram0"]
    assert image.stored == 4  # chunks 0, 1, 5, 7 of 64
    assert list(image.runs())[0][:2] == (0, fmt.DATA_START)
    assert os.stat(path).st_blocks * 512 < 2 * MiB  # zero pages inside stored chunks are holes
    snap.close()


def _head(data):
    _, _, _, head, hlen = fmt._HEADER_V2.unpack_from(data)
    body = data[head:head + hlen - 32]
    (mlen,) = struct.unpack_from("<I", body)
    man = json.loads(body[4:4 + mlen])
    area = body[4 + mlen:]
    blobs = {e["name"]: area[e["offset"]:e["offset"] + e["length"]] for e in man["blobs"]}
    return head, man, blobs


def rewrite(path, change):
    """Rewrite the head of a v2 file after ``change(manifest, blobs)``, with a
    correct blob table and checksum: what someone crafting a file would do."""
    data = open(path, "rb").read()
    head, man, blobs = _head(data)
    change(man, blobs)
    table, offset = [], 0
    for name, b in blobs.items():
        table.append({"name": name, "offset": offset, "length": len(b), "sha256": hashlib.sha256(b).hexdigest()})
        offset += len(b)
    man["blobs"] = table
    mbytes = json.dumps(man, sort_keys=True, separators=(",", ":")).encode()
    body = struct.pack("<I", len(mbytes)) + mbytes + b"".join(blobs.values())
    header = fmt._HEADER_V2.pack(fmt.MAGIC, 2, 0, head, len(body) + 32)
    digest = hashlib.sha256(header + body).digest()
    with open(path, "wb") as f:
        f.write(header + data[len(header):head] + body + digest)


def _entry(i, slot, crc):
    return struct.pack("<II", slot, crc)


@pytest.mark.parametrize("change, message", [
    (lambda m, b: m["ram"][0].update(data_offset=fmt.DATA_START + 4096), "not a multiple"),
    (lambda m, b: m["ram"][0].update(data_offset=1 << 40), "data_offset"),
    (lambda m, b: m["ram"][0].update(stored_chunks=9), "stored_chunks"),
    (lambda m, b: m["ram"][0].update(stored_chunks=2), "the manifest says 2"),
    (lambda m, b: m["ram"][0].update(size=1 << 53), "'size'"),
    (lambda m, b: m["ram"][0].update(size=8 * MiB + 1), "multiple"),
    (lambda m, b: m["ram"][0].update(chunk_bytes=4096), "chunk_bytes"),
    (lambda m, b: m["ram"][0].update(table="vcpu0.regs"), "chunk table of 9 bytes"),
    (lambda m, b: m["ram"][0].update(table="nothing"), "not a blob"),
    (lambda m, b: m["ram"][0].update(name="vcpu0.regs"), "name of a blob"),
    (lambda m, b: m.update(ram={"ram0": 1}), "'ram' must be a list"),
    (lambda m, b: b.update({"ram0.table": b["ram0.table"][8:16] + b["ram0.table"][:8] + b["ram0.table"][16:]}),
     "slot"),
    (lambda m, b: b.update({"ram0.table": b["ram0.table"][:16] + _entry(2, 0, 7) + b["ram0.table"][24:]}),
     "zero chunk 2 has a CRC"),
    (lambda m, b: b.update({"ram0.table": b["ram0.table"][:-8]}), "chunk table of"),
])
def test_a_malformed_table_or_offset_is_refused_on_load(tmp_path, change, message):
    path, _ = save(tmp_path, guest_ram())
    rewrite(path, change)
    with pytest.raises(fmt.SnapshotError, match=message):
        fmt.load(path)


def test_chunks_beyond_the_data_area_are_refused(tmp_path):
    path, _ = save(tmp_path, guest_ram())
    # the head moved down over the last chunk: slots would reach into it
    data = open(path, "rb").read()
    head, man, blobs = _head(data)
    cut = head - MiB
    with open(path, "wb") as f:
        f.write(data[:cut] + data[head:])
    with pytest.raises(fmt.SnapshotError, match="truncated or altered"):
        fmt.load(path)
    with open(path, "r+b") as f:  # and with a header that agrees
        f.write(fmt._HEADER_V2.pack(fmt.MAGIC, 2, 0, cut, len(data) - head))
    with pytest.raises(fmt.SnapshotError, match="checksum"):
        fmt.load(path)


def test_a_changed_head_byte_fails_the_checksum(tmp_path):
    path, _ = save(tmp_path, guest_ram())
    data = bytearray(open(path, "rb").read())
    head = fmt._HEADER_V2.unpack_from(data)[3]
    for at in (16, head + 10, len(data) - 40, len(data) - 1):
        bad = bytearray(data)
        bad[at] ^= 1
        open(path, "wb").write(bad)
        with pytest.raises(fmt.SnapshotError):
            fmt.load(path)


def test_a_damaged_chunk_is_found_by_its_crc(tmp_path):
    path, _ = save(tmp_path, guest_ram())
    snap = fmt.load(path)
    assert snap.verify_ram() is None and snap.ram_checked
    snap.close()
    with open(path, "r+b") as f:  # a byte of chunk 5 (slot 2), outside the head: load still works
        f.seek(fmt.DATA_START + 2 * MiB + MiB - 100)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))
    snap = fmt.load(path)
    bad = snap.verify_ram()
    assert bad.startswith("memory chunk 5 (0x500000+0x100000 of ram0) fails its CRC-32")
    assert not snap.ram_checked


class FakeMachine:
    """Stands in for a Machine: records finish()."""

    def __init__(self, ran=True):
        self.finished = []
        self.first_run_ns = 1 if ran else None  # a vCPU entered the guest

    def finish(self, status, reason):
        self.finished.append((status, reason))


def test_the_background_verifier_stops_the_machine_on_a_damaged_chunk(tmp_path):
    path, _ = save(tmp_path, guest_ram())
    with open(path, "r+b") as f:
        f.seek(fmt.DATA_START + 5)
        f.write(b"\xff")
    m = FakeMachine()
    v = RamVerifier(m, fmt.load(path))
    v.join(60)
    v.close()
    assert len(m.finished) == 1 and "memory chunk 0" in m.finished[0][1] and "stopped" in m.finished[0][1]
    good = FakeMachine()
    snap = fmt.load(save(tmp_path, guest_ram(), "good.snap")[0])
    v = RamVerifier(good, snap)
    v.join(60)
    v.close()
    assert good.finished == [] and snap.ram_checked and snap.fd == -1  # checked, file closed


def test_the_background_verifier_waits_for_the_guest_to_run(tmp_path):
    snap = fmt.load(save(tmp_path, guest_ram())[0])
    m = FakeMachine(ran=False)
    v = RamVerifier(m, snap)
    try:
        v.join(0.3)  # well under RamVerifier.START_WAIT: still waiting for the first KVM_RUN
        assert not snap.ram_checked
        m.first_run_ns = 2
        v.join(60)
        assert snap.ram_checked and m.finished == []
    finally:
        v.close()


def test_a_seal_binds_the_chunk_tables_and_the_chunks(tmp_path):
    key = os.urandom(32)
    path, _ = save(tmp_path, guest_ram(), seal=lambda m: trust.seal(m, key))
    assert trust.verify(fmt.load(path), key).sealed
    with open(path, "r+b") as f:
        f.seek(fmt.DATA_START + 7)
        f.write(b"\x01")
    verdict = trust.verify(fmt.load(path), key)
    assert not verdict.sealed and "fails its CRC-32" in verdict.reason


def test_version_1_files_still_load_and_newer_ones_are_refused_by_number(tmp_path):
    snap = machine_snapshot()
    assert snap.manifest["format_version"] == 1 and isinstance(snap.blobs["ram0"], bytes)
    path, _ = save(tmp_path, guest_ram())
    data = bytearray(open(path, "rb").read())
    data[8:12] = struct.pack("<I", 4)
    open(path, "wb").write(data)
    with pytest.raises(fmt.SnapshotError, match="format version 4, newer than this pyvmm's 3"):
        fmt.load(path)
    data[8:12] = struct.pack("<I", 0)
    open(path, "wb").write(data)
    with pytest.raises(fmt.SnapshotError, match="invalid format version 0"):
        fmt.load(path)


def test_map_file_refuses_shared_or_unaligned_ranges(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(bytes(2 * MiB))
    fd = os.open(f, os.O_RDONLY)
    try:
        mem = GuestMemory()
        mem.add(GPA, 4 * MiB, shared=True)
        with pytest.raises(Exception, match="shared"):
            mem.map_file(GPA, MiB, fd, 0)
        anon = GuestMemory()
        anon.add(GPA, 4 * MiB)
        with pytest.raises(Exception, match="aligned"):
            anon.map_file(GPA + 100, MiB, fd, 0)
        with pytest.raises(Exception, match="outside guest RAM"):
            anon.map_file(GPA + 3 * MiB, 2 * MiB, fd, 0)
    finally:
        os.close(fd)
    assert mmap.PAGESIZE <= ram_image.DATA_ALIGN

"""The snapshot file format (documented in docs/snapshot-format.md).

Version 3, what :func:`save` writes, is version 2 with a chain link: the
manifest's ``chain`` names the file's parent (an incremental snapshot: its
RAM chunk tables mark the chunks that did not change as the parent's) by
file name and head digest, or none (a full snapshot). :func:`load` follows
the links (:mod:`pyvmm.snapshot.chain`).

Version 2: guest RAM page-aligned so that restore maps it instead of
reading it (:mod:`pyvmm.snapshot.ram_image`)::

    offset 0   magic   b"PYVMMSNP"
           8   u32le   format version (2, or 3)
          12   u32le   0
          16   u64le   head offset H
          24   u64le   head length L
       64 KiB  RAM data area: each region's stored 1 MiB chunks, from its
               manifest "ram" entry's data_offset (64 KiB aligned)
           H   u32le   manifest length M, then M bytes manifest (UTF-8 JSON),
               then the small blobs (vCPU registers, chunk tables) concatenated,
               as the manifest's "blobs" table lists them with their SHA-256
         H+L-32  32 bytes SHA-256 of bytes 0..32 and H..H+L-32

Version 1, still read (and written by :func:`encode`, for tools and tests)::

    offset 0   magic   b"PYVMMSNP"
           8   u32le   format version (1)
          12   u32le   manifest length M
          16   M bytes manifest, UTF-8 JSON (self-describing: blob table, machine config)
        16+M   blobs, concatenated; the manifest's "blobs" gives name, offset (from the
               start of the blob area), length and SHA-256 of each
         end   32 bytes SHA-256 of everything before it

Writes are atomic (temporary file in the same directory, fsync, rename, fsync
of the directory) and the file is created with mode 0600. Reading verifies
magic, version, the checksum (v1: the whole file; v2: header and head), the
manifest, each blob's bounds and every RAM chunk table's bounds before
anything is returned; v2 RAM chunks are checked by their CRC-32 later
(:meth:`Snapshot.verify_ram`).
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import weakref
from .._record import field, record
from typing import Callable, Dict, List, Optional, Set, Union, cast

from ..devices.state import StateReader, loads
from ..errors import PyvmmError, SnapshotError, UsageProblem
from . import ram_image

MAGIC = b"PYVMMSNP"
FORMAT_VERSION = 3  # what save() writes
VERSIONS = (1, 2, 3)  # what load() reads
MAPPED = (2, 3)  # versions whose guest RAM is mapped from the file
_HEADER = struct.Struct("<8sII")
_HEADER_V2 = struct.Struct("<8sIIQQ")
_MLEN = struct.Struct("<I")
DATA_START = ram_image.DATA_ALIGN
_DIGEST = 32
MAX_MANIFEST = 64 << 20
_VIEW_MIN = 1 << 20


class WriteError(PyvmmError):
    """A snapshot could not be written (the host's reason); nothing is left behind."""


# A blob's bytes: small ones copied out of the file, large ones (guest
# memory) views of its mapping; guest RAM of a version-2 file (mapped
# chunks), or of a machine being saved (its live buffer).
Blob = Union[bytes, memoryview, ram_image.MappedRam, ram_image.LiveRam]  # MappedRam: ChainedRam too
Bytes = Union[bytes, memoryview]  # a blob that is bytes in the file (not guest RAM)


def small_blob(snap: "Snapshot", name: str) -> Bytes:
    """The bytes of blob ``name`` (KeyError when it is missing or is guest RAM)."""
    blob = snap.blobs[name]
    if not isinstance(blob, (bytes, memoryview)):
        raise KeyError(f"{name} is guest RAM, not a blob")
    return blob


@record
class Snapshot:
    """A snapshot in memory: its manifest (JSON) and its named blobs."""
    manifest: Dict
    blobs: Dict[str, Blob] = field(default_factory=dict)
    # Called with the finished manifest (blob table filled in) before it is
    # written: adds the keyed seal (pyvmm/snapshot/trust.py).
    seal: Optional[Callable[[Dict], None]] = None
    # The file, open, for mapping its RAM (a loaded version-2 file; -1 otherwise).
    fd: int = -1
    ram_checked: bool = False  # every RAM chunk's CRC-32 checked (verify_ram)
    # Versions 2 and 3: the SHA-256 of header and head (hex), what a child names its parent by.
    head_sha256: Optional[str] = None
    # An incremental snapshot being saved: the chunks of each RAM region
    # that changed since its parent (the rest are marked as the parent's).
    changed: Optional[Dict[str, Set[int]]] = None
    path: Optional[str] = None  # the file it was loaded from (absolute)
    # A loaded incremental snapshot: its ancestors, newest first (closed with it).
    parents: List["Snapshot"] = field(default_factory=list)

    def __post_init__(self) -> None:
        # the file is closed with the snapshot, or by close(); mappings made from it stay
        self._closer = weakref.finalize(self, os.close, self.fd) if self.fd >= 0 else None

    def ram_images(self) -> Dict[str, ram_image.MappedRam]:
        return {k: v for k, v in self.blobs.items() if isinstance(v, ram_image.MappedRam)}

    def verify_ram(self, stop=None, progress=None, background: bool = False) -> Optional[str]:
        """Check the CRC-32 of every stored RAM chunk of a version-2 file;
        the first mismatch as a sentence, or None (also for version 1, whose
        whole-file SHA-256 was checked when it was read). ``background``:
        at a lower CPU priority (:meth:`MappedRam.verify`)."""
        for image in self.ram_images().values():
            bad = image.verify(stop, progress, background=background)
            if bad:
                return bad
            if stop is not None and stop.is_set():
                return None
        self.ram_checked = True
        return None

    def close(self) -> None:
        """Close the file (mappings made from it stay valid)."""
        if self._closer is not None:
            self._closer()
            self.fd = -1
            for image in self.ram_images().values():
                image.fd = -1
        for parent in self.parents:
            parent.close()


def _v1_blobs(snap: Snapshot) -> Dict[str, Bytes]:
    """The blobs as version 1 stores them: guest RAM as a page bitmap and its non-zero pages."""
    from . import memory_image

    out: Dict[str, Bytes] = {}
    for name, data in snap.blobs.items():
        if isinstance(data, ram_image.LiveRam):
            out[name], stored = memory_image.pack(data.buf)
            if data.entry is not None:
                data.entry["stored_pages"] = stored
        elif isinstance(data, ram_image.MappedRam):
            out[name], _ = memory_image.pack(bytes(data))
        elif name.endswith(".table") and name[:-6] in snap.blobs and not isinstance(snap.blobs[name[:-6]], bytes):
            continue  # a version-2 chunk table: version 1 has none
        else:
            out[name] = data
    return out


def _parts(snap: Snapshot) -> List:
    """Header + manifest, then each blob (buffers, not copied): the file
    without its trailing digest. The blob table is filled in here."""
    table = []
    offset = 0
    blobs = _v1_blobs(snap)
    for name, data in blobs.items():
        table.append({"name": name, "offset": offset, "length": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
        offset += len(data)
    manifest = dict(snap.manifest)
    manifest["format_version"] = 1
    manifest["blobs"] = table
    if snap.seal is not None:
        snap.seal(manifest)
    mbytes = _dumps(manifest)
    return [_HEADER.pack(MAGIC, 1, len(mbytes)) + mbytes, *blobs.values()]


def _dumps(manifest: Dict) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def encode(snap: Snapshot) -> bytes:
    """The bytes of a version-1 snapshot file (guest RAM read into the file)."""
    body = b"".join(_parts(snap))
    return body + hashlib.sha256(body).digest()


def decode(data: Union[bytes, memoryview], what: str = "snapshot", fd: int = -1) -> Snapshot:
    """A snapshot from a file's bytes (``fd``: the file, open, for mapping
    version-2 RAM; without it that RAM is read). Refuses, with the reason,
    anything damaged, malformed or newer."""
    if len(data) < _HEADER.size + _DIGEST:
        raise SnapshotError(f"{what} is truncated ({len(data)} bytes)", "take the snapshot again")
    magic, version, mlen = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"{what} is not a pyvmm snapshot (bad magic)")
    if version > max(VERSIONS):
        raise SnapshotError(f"{what} has format version {version}, newer than this pyvmm's {max(VERSIONS)}",
                            "upgrade pyvmm to restore it")
    if version not in VERSIONS:
        raise SnapshotError(f"{what} has an invalid format version {version}")
    if version in MAPPED:
        return _decode_v2(data, what, fd, version)
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{what} fails its checksum: it is truncated or altered",
                            "use an intact copy or take the snapshot again")
    if mlen > MAX_MANIFEST or _HEADER.size + mlen > len(body):
        raise SnapshotError(f"{what} has a manifest length beyond the file")
    manifest = _manifest(body[_HEADER.size:_HEADER.size + mlen], version, what)
    return Snapshot(manifest, _blobs(manifest, body[_HEADER.size + mlen:], what))


def _manifest(text, version: int, what: str) -> Dict:
    try:
        manifest = loads(text, f"{what}'s manifest")
    except UsageProblem as e:
        raise SnapshotError(e.message) from None
    if not isinstance(manifest, dict):
        raise SnapshotError(f"{what}'s manifest is a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format_version") != version:
        raise SnapshotError(f"{what}'s manifest says format version {manifest.get('format_version')!r}, "
                            f"its header {version}")
    if not isinstance(manifest.get("blobs"), list):
        raise SnapshotError(f"{what}'s manifest: 'blobs' must be a list")
    return manifest


def _blobs(manifest: Dict, area, what: str) -> Dict[str, Blob]:
    """The blobs the manifest's table lists in ``area``, each bounded first."""
    blobs: Dict[str, Blob] = {}
    for i, entry in enumerate(manifest["blobs"]):
        r = StateReader(f"{what}'s manifest blobs[{i}]", entry, ("name", "offset", "length", "sha256"))
        name, off, length = r.str("name"), r.int("offset", 0, len(area)), r.int("length", 0, len(area))
        r.str("sha256")
        if name in blobs:
            raise r.fail(f"blob {name!r} is listed twice")
        if off + length > len(area):
            raise SnapshotError(f"{what}: blob {name!r} lies beyond the end of the file")
        blob = area[off:off + length]
        # Each blob's own SHA-256 is in the table for tools that check one
        # blob alone; the file digest above already covers every byte, so
        # restore does not hash guest memory twice. Small blobs are copied
        # out; large ones (guest memory) stay views of the caller's buffer.
        blobs[name] = bytes(blob) if length < _VIEW_MIN else blob
    return blobs


_RAM_KEYS = ("name", "size", "chunk_bytes", "data_offset", "stored_chunks", "table")
MAX_RAM = 1 << 52


def _decode_v2(data, what: str, fd: int, version: int = 2) -> Snapshot:
    if len(data) < _HEADER_V2.size:
        raise SnapshotError(f"{what} is truncated ({len(data)} bytes)", "take the snapshot again")
    _, _, reserved, head, hlen = _HEADER_V2.unpack_from(data)
    if reserved or head < DATA_START or hlen < _MLEN.size + _DIGEST or head + hlen != len(data):
        raise SnapshotError(f"{what} is truncated or altered (its head at {head:#x}+{hlen:#x} does not end the "
                            f"{len(data)}-byte file)", "use an intact copy or take the snapshot again")
    h = hashlib.sha256(data[:_HEADER_V2.size])
    h.update(data[head:head + hlen - _DIGEST])
    if h.digest() != data[head + hlen - _DIGEST:head + hlen]:
        raise SnapshotError(f"{what} fails its checksum: it is truncated or altered",
                            "use an intact copy or take the snapshot again")
    body = data[head:head + hlen - _DIGEST]
    (mlen,) = _MLEN.unpack_from(body)
    if mlen > MAX_MANIFEST or _MLEN.size + mlen > len(body):
        raise SnapshotError(f"{what} has a manifest length beyond the file")
    manifest = _manifest(body[_MLEN.size:_MLEN.size + mlen], version, what)
    blobs = _blobs(manifest, body[_MLEN.size + mlen:], what)
    ram = manifest.get("ram")
    if not isinstance(ram, list) or len(ram) > 16:
        raise SnapshotError(f"{what}'s manifest: 'ram' must be a list of at most 16 regions")
    try:
        in_parent = version == 3 and check_chain(manifest.get("chain"), what)["parent"] is not None
        _ram_images(ram, blobs, memoryview(data), head, what, fd, in_parent)
    except SnapshotError:
        raise
    except UsageProblem as e:  # a field refused by the StateReader
        raise SnapshotError(e.message) from None
    return Snapshot(manifest, blobs, fd=fd, head_sha256=h.hexdigest())


MAX_CHAIN = 32  # files in a chain of incremental snapshots, the full one included
_HEX = frozenset("0123456789abcdef")


def _hex_field(r: StateReader, key: str, digits: int) -> str:
    value = r.str(key)
    if len(value) != digits or not set(value) <= _HEX:
        raise r.fail(f"{key!r} must be {digits} lowercase hex digits")
    return value


def check_chain(chain, what: str) -> Dict:
    """A version-3 manifest's ``chain``, every field checked: ``lineage``
    (32 hex digits, the running VM's tracking that made the file),
    ``depth`` (0 for a full snapshot, its parent's + 1 otherwise, below
    MAX_CHAIN) and ``parent``: null, or ``path`` (a file name in this
    file's directory) and ``head_sha256`` (64 hex digits)."""
    r = StateReader(f"{what}'s manifest chain", chain, ("lineage", "depth", "parent"))
    _hex_field(r, "lineage", 32)
    depth = r.int("depth", 0, MAX_CHAIN - 1)
    parent = chain["parent"]
    if parent is None:
        if depth:
            raise r.fail(f"'depth' is {depth} and 'parent' null: only a full snapshot has no parent")
        return chain
    if not depth:
        raise r.fail("'depth' is 0 and a parent is named: a full snapshot has no parent")
    p = StateReader(f"{what}'s manifest chain.parent", r.dict("parent"), ("path", "head_sha256"))
    name = p.str("path")
    if name in ("", ".", "..") or "/" in name or "\0" in name or len(name) > 255:
        raise p.fail(f"'path' must be a file name in the snapshot's own directory, not {name!r}")
    _hex_field(p, "head_sha256", 64)
    return chain


def _ram_images(ram: List, blobs: Dict[str, Blob], view: memoryview, head: int, what: str, fd: int,
               in_parent: bool = False) -> None:
    """Add each "ram" entry's region to ``blobs``, every field bounded first."""
    for i, entry in enumerate(ram):
        r = StateReader(f"{what}'s manifest ram[{i}]", entry, _RAM_KEYS)
        name, table = r.str("name"), r.str("table")
        size = r.int("size", ram_image.PAGE, MAX_RAM)
        if size % ram_image.PAGE:
            raise r.fail(f"'size' {size:#x} is not a multiple of {ram_image.PAGE:#x}")
        if r.int("chunk_bytes", 0, 1 << 32) != ram_image.CHUNK:
            raise r.fail(f"'chunk_bytes' must be {ram_image.CHUNK:#x}")
        offset = r.int("data_offset", DATA_START, head)
        stored = r.int("stored_chunks", 0, ram_image.chunks_of(size))
        if name in blobs:
            raise r.fail(f"RAM {name!r} has the name of a blob")
        if table not in blobs or isinstance(blobs[table], ram_image.MappedRam):
            raise r.fail(f"its chunk table {table!r} is not a blob of the file")
        try:
            ram_image.check_table(name, size, blobs[table], offset, stored, head, in_parent)
        except ValueError as e:
            raise SnapshotError(f"{what}: {e}") from None
        blobs[name] = ram_image.MappedRam(name, size, bytes(blobs[table]), view[offset:head], offset, fd)


def write_atomic(path: str, data, progress: Optional[Callable[[int, int], None]] = None) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or
    the complete new one, never a partial write, with mode 0600."""
    _write_parts(path, [data], progress, digest=False)


def _write_parts(path: str, parts: List, progress: Optional[Callable[[int, int], None]],
                 digest: bool, chunk: int = 8 << 20) -> int:
    """Write the concatenation of ``parts`` (plus, with ``digest``, the
    SHA-256 of it) atomically. Returns the bytes written."""
    total = sum(len(p) for p in parts) + (_DIGEST if digest else 0)
    _atomic(path, lambda fd: _write_fd(fd, parts, total, progress, digest, chunk))
    return total


def _atomic(path: str, write: Callable[[int], None]) -> None:
    """Run ``write(fd)`` on a new temporary file in ``path``'s directory
    (mode 0600), then fsync, rename onto ``path``, fsync of the directory:
    ``path`` is either the old file or the complete new one."""
    directory = os.path.dirname(os.path.abspath(path))
    # A new name each time (O_EXCL): two writers never share a temporary file.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror}") from None
    try:
        try:
            write(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        # Whatever failed (a write, the fsync, the final rename onto a
        # directory, a signal), the temporary file -- possibly the whole
        # snapshot -- does not stay behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _write_fd(fd: int, parts: List, total: int, progress, digest: bool, chunk: int) -> None:
    h = hashlib.sha256()
    done = 0
    for part in (*parts, None) if digest else parts:
        if part is None:
            part = h.digest()
        elif digest:
            h.update(part)
        view = memoryview(part).cast("B")
        pos = 0
        while pos < len(view):
            n = os.write(fd, view[pos:pos + chunk])
            pos += n
            done += n
            if progress:
                progress(done, total)


def save(path: str, snap: Snapshot, progress: Optional[Callable[[int, int], None]] = None,
         version: int = FORMAT_VERSION) -> int:
    """Write ``snap`` to ``path`` atomically (mode 0600); returns its size.
    Versions 3 (the default) and 2 write guest RAM in mappable chunks (3:
    with the manifest's ``chain``, and only the ``snap.changed`` chunks when
    it names a parent); version 1 as a page bitmap and the non-zero pages.
    Nothing is concatenated in memory. Sets ``snap.head_sha256``."""
    if version == 1:
        return _write_parts(path, _parts(snap), progress, digest=True)
    if version not in MAPPED:
        raise UsageProblem(f"snapshot format version {version}: this pyvmm writes {', '.join(map(str, VERSIONS))}")
    if version == 3:
        # a snapshot of no tracked machine: a full one, which no --since can follow
        snap.manifest.setdefault("chain", {"lineage": os.urandom(16).hex(), "depth": 0, "parent": None})
        chain = check_chain(snap.manifest["chain"], "the snapshot being written")
        if (chain["parent"] is None) != (snap.changed is None):
            raise ValueError("an incremental snapshot needs both a parent and its changed chunks")
    elif "chain" in snap.manifest or snap.changed is not None:
        raise UsageProblem("snapshot format version 2 has no chain: incremental snapshots are version 3")
    size = [0]
    _atomic(path, lambda fd: size.__setitem__(0, _write_v2(fd, snap, progress, version)))
    return size[0]


def _write_v2(fd: int, snap: Snapshot, progress, version: int = 2) -> int:
    # guest RAM: a machine's (live), or another file's (read in: a tool re-saving a snapshot)
    images = {k: v if isinstance(v, ram_image.LiveRam) else ram_image.LiveRam(bytes(v))
              for k, v in snap.blobs.items() if isinstance(v, (ram_image.LiveRam, ram_image.MappedRam))}
    small = cast(Dict[str, Bytes], {k: v for k, v in snap.blobs.items() if k not in images})
    total = sum(r.size for r in images.values())
    done = 0
    pos = DATA_START
    ram = []
    for name, image in images.items():
        def report(d: int, _t: int, base: int = done) -> None:
            if progress:
                progress(base + d, total)
        changed = None if snap.changed is None else snap.changed.get(name, set())
        table, stored, _ = ram_image.write_image(fd, pos, image, report, changed=changed)
        done += image.size
        small[f"{name}.table"] = table
        ram.append({"name": name, "size": image.size, "chunk_bytes": ram_image.CHUNK, "data_offset": pos,
                    "stored_chunks": stored, "table": f"{name}.table"})
        pos += stored * ram_image.CHUNK
    blob_table = []
    offset = 0
    for name, data in small.items():
        blob_table.append({"name": name, "offset": offset, "length": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()})
        offset += len(data)
    manifest = dict(snap.manifest)
    manifest.update(format_version=version, blobs=blob_table, ram=ram)
    if snap.seal is not None:
        snap.seal(manifest)
    mbytes = _dumps(manifest)
    head = [_MLEN.pack(len(mbytes)), mbytes, *small.values()]
    hlen = sum(len(p) for p in head) + _DIGEST
    header = _HEADER_V2.pack(MAGIC, version, 0, pos, hlen)
    h = hashlib.sha256(header)
    for part in head:
        h.update(part)
    snap.head_sha256 = h.hexdigest()
    at = pos
    for part in (*head, h.digest()):
        ram_image.pwrite_all(fd, memoryview(part).cast("B"), at)
        at += len(part)
    ram_image.pwrite_all(fd, memoryview(header), 0)
    if progress:
        progress(total, total)
    return at


def load(path: str) -> Snapshot:
    """Read and verify a snapshot file -- an incremental one with every
    file of its chain (:func:`pyvmm.snapshot.chain.resolve`). The file is
    mapped, not read: blobs are views into the mapping (guest memory is
    copied once, into the VM)."""
    snap = load_one(path)
    if snap.manifest.get("format_version") == 3 and snap.manifest["chain"]["parent"] is not None:
        from . import chain

        try:
            chain.resolve(snap, path)
        except BaseException:
            snap.close()
            raise
    return snap


def load_one(path: str) -> Snapshot:
    """Read and verify one snapshot file (an incremental one without its
    parents: its RAM cannot be used until :func:`pyvmm.snapshot.chain.resolve`)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UsageProblem(f"snapshot {path} does not exist") from None
    except IsADirectoryError:
        raise UsageProblem(f"snapshot {path} is a directory, not a file") from None
    except PermissionError:
        raise UsageProblem(f"snapshot {path}: permission denied") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return decode(b"", f"snapshot {path}")
        data = mmap.mmap(f.fileno(), size, mmap.MAP_PRIVATE, mmap.PROT_READ)
        # versions 2 and 3: their RAM is mapped from fd
        fd = os.dup(f.fileno()) if data[8:12] in (b"\x02\0\0\0", b"\x03\0\0\0") else -1
    try:
        snap = decode(memoryview(data), f"snapshot {path}", fd)
        snap.path = os.path.abspath(path)
        return snap
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise

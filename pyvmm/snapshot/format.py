"""The snapshot file format (documented in docs/snapshot-format.md).

    offset 0   magic   b"PYVMMSNP"
           8   u32le   format version (FORMAT_VERSION)
          12   u32le   manifest length M
          16   M bytes manifest, UTF-8 JSON (self-describing: blob table, machine config)
        16+M   blobs, concatenated; the manifest's "blobs" gives name, offset (from the
               start of the blob area), length and SHA-256 of each
         end   32 bytes SHA-256 of everything before it

Writes are atomic (temporary file in the same directory, fsync, rename, fsync
of the directory) and the file is created with mode 0600. Reading verifies
magic, version, the whole-file checksum, the manifest, and each blob's
bounds before anything is returned.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import secrets
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

from ..devices.state import StateReader, loads
from ..errors import PyvmmError, UsageProblem

MAGIC = b"PYVMMSNP"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sII")
_DIGEST = 32
MAX_MANIFEST = 64 << 20
_VIEW_MIN = 1 << 20


class SnapshotError(UsageProblem):
    """A snapshot that cannot be used: truncated, altered, newer, malformed,
    or not one. Exit status 2, like every other malformed input file."""


class WriteError(PyvmmError):
    """A snapshot could not be written (the host's reason); nothing is left behind."""


# A blob's bytes: small ones copied out of the file, large ones (guest
# memory) views of its mapping.
Blob = Union[bytes, memoryview]


@dataclass
class Snapshot:
    """A snapshot in memory: its manifest (JSON) and its named blobs."""
    manifest: Dict
    blobs: Dict[str, Blob] = field(default_factory=dict)
    # Called with the finished manifest (blob table filled in) before it is
    # written: adds the keyed seal (pyvmm/snapshot/trust.py).
    seal: Optional[Callable[[Dict], None]] = None


def _parts(snap: Snapshot) -> List:
    """Header + manifest, then each blob (buffers, not copied): the file
    without its trailing digest. The blob table is filled in here."""
    table = []
    offset = 0
    for name, data in snap.blobs.items():
        table.append({"name": name, "offset": offset, "length": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
        offset += len(data)
    manifest = dict(snap.manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["blobs"] = table
    if snap.seal is not None:
        snap.seal(manifest)
    mbytes = json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return [_HEADER.pack(MAGIC, FORMAT_VERSION, len(mbytes)) + mbytes, *snap.blobs.values()]


def encode(snap: Snapshot) -> bytes:
    """The bytes of a snapshot file."""
    body = b"".join(_parts(snap))
    return body + hashlib.sha256(body).digest()


def decode(data: Union[bytes, memoryview], what: str = "snapshot") -> Snapshot:
    if len(data) < _HEADER.size + _DIGEST:
        raise SnapshotError(f"{what} is truncated ({len(data)} bytes)", "take the snapshot again")
    magic, version, mlen = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"{what} is not a pyvmm snapshot (bad magic)")
    if version > FORMAT_VERSION:
        raise SnapshotError(f"{what} has format version {version}, newer than this pyvmm's {FORMAT_VERSION}",
                            "upgrade pyvmm to restore it")
    if version < 1:
        raise SnapshotError(f"{what} has an invalid format version {version}")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{what} fails its checksum: it is truncated or altered",
                            "use an intact copy or take the snapshot again")
    if mlen > MAX_MANIFEST or _HEADER.size + mlen > len(body):
        raise SnapshotError(f"{what} has a manifest length beyond the file")
    try:
        manifest = loads(bytes(body[_HEADER.size:_HEADER.size + mlen]), f"{what}'s manifest")
    except UsageProblem as e:
        raise SnapshotError(e.message) from None
    if not isinstance(manifest, dict):
        raise SnapshotError(f"{what}'s manifest is a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format_version") != version:
        raise SnapshotError(f"{what}'s manifest says format version {manifest.get('format_version')!r}, "
                            f"its header {version}")
    if not isinstance(manifest.get("blobs"), list):
        raise SnapshotError(f"{what}'s manifest: 'blobs' must be a list")
    area = body[_HEADER.size + mlen:]
    blobs = {}
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
    return Snapshot(manifest, blobs)


def write_atomic(path: str, data, progress: Optional[Callable[[int, int], None]] = None) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or
    the complete new one, never a partial write, with mode 0600."""
    _write_parts(path, [data], progress, digest=False)


def _write_parts(path: str, parts: List, progress: Optional[Callable[[int, int], None]],
                 digest: bool, chunk: int = 8 << 20) -> int:
    """Write the concatenation of ``parts`` (plus, with ``digest``, the
    SHA-256 of it) atomically: a temporary file in the same directory,
    fsync, rename, fsync of the directory. Returns the bytes written."""
    directory = os.path.dirname(os.path.abspath(path))
    # A new name each time (O_EXCL): two writers never share a temporary file.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    total = sum(len(p) for p in parts) + (_DIGEST if digest else 0)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror}") from None
    try:
        try:
            _write_fd(fd, parts, total, progress, digest, chunk)
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
    return total


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


def save(path: str, snap: Snapshot, progress: Optional[Callable[[int, int], None]] = None) -> int:
    """Write ``snap`` to ``path`` atomically (mode 0600); returns its size.
    Blobs are streamed from their buffers, not concatenated in memory."""
    return _write_parts(path, _parts(snap), progress, digest=True)


def load(path: str) -> Snapshot:
    """Read and verify a snapshot file. The file is mapped, not read: blobs
    are views into the mapping (guest memory is copied once, into the VM)."""
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
    return decode(memoryview(data), f"snapshot {path}")

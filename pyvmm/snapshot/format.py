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
bounds and checksum before anything is returned.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from ..errors import UsageProblem

MAGIC = b"PYVMMSNP"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sII")
_DIGEST = 32
MAX_MANIFEST = 64 << 20


class SnapshotError(UsageProblem):
    """A snapshot that cannot be used: truncated, altered, newer, or not one."""

    exit_status = 1


@dataclass
class Snapshot:
    manifest: Dict
    blobs: Dict[str, bytes] = field(default_factory=dict)


def encode(snap: Snapshot) -> bytes:
    """The bytes of a snapshot file (blob table filled in here)."""
    table = []
    offset = 0
    for name, data in snap.blobs.items():
        table.append({"name": name, "offset": offset, "length": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
        offset += len(data)
    manifest = dict(snap.manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["blobs"] = table
    mbytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    body = _HEADER.pack(MAGIC, FORMAT_VERSION, len(mbytes)) + mbytes + b"".join(snap.blobs.values())
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, what: str = "snapshot") -> Snapshot:
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
        manifest = json.loads(body[_HEADER.size:_HEADER.size + mlen])
        if not isinstance(manifest, dict) or manifest.get("format_version") != version:
            raise ValueError("manifest does not match the header")
        table = manifest["blobs"]
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"{what} has an invalid manifest ({e})") from None
    area = body[_HEADER.size + mlen:]
    blobs = {}
    for entry in table:
        try:
            name, off, length, sha = entry["name"], int(entry["offset"]), int(entry["length"]), entry["sha256"]
        except (KeyError, TypeError, ValueError):
            raise SnapshotError(f"{what} has an invalid blob table entry") from None
        if off < 0 or length < 0 or off + length > len(area):
            raise SnapshotError(f"{what}: blob {name!r} lies beyond the end of the file")
        blob = area[off:off + length]
        if hashlib.sha256(blob).hexdigest() != sha:
            raise SnapshotError(f"{what}: blob {name!r} fails its checksum")
        blobs[name] = blob
    return Snapshot(manifest, blobs)


def write_atomic(path: str, data: bytes, progress: Optional[Callable[[int, int], None]] = None,
                 chunk: int = 8 << 20) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or
    the complete new one, never a partial write, with mode 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        done = 0
        while done < len(data):
            n = os.write(fd, view[done:done + chunk])
            done += n
            if progress:
                progress(done, len(data))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(path: str, snap: Snapshot, progress=None) -> int:
    data = encode(snap)
    write_atomic(path, data, progress)
    return len(data)


def load(path: str) -> Snapshot:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UsageProblem(f"snapshot {path} does not exist") from None
    except IsADirectoryError:
        raise UsageProblem(f"snapshot {path} is a directory, not a file") from None
    return decode(data, f"snapshot {path}")

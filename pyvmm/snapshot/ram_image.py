"""Guest RAM in a version-2 snapshot file: page-aligned chunks that restore
maps instead of reading (docs/snapshot-format.md, "Version 2").

A region is cut into chunks of ``chunk_bytes`` (1 MiB). A chunk that is all
zero is not stored. Every other chunk has a slot in the file's data area --
slot k at ``data_offset + k * chunk_bytes``, in chunk order -- written with
its zero pages left as holes (a sparse file), and a CRC-32 of its bytes in
the region's chunk table, a small blob pinned by the manifest's SHA-256 and
so by the seal::

    table entry i (8 bytes, one per chunk of the region)
        u32le  slot + 1 of chunk i (0: the chunk is all zero, not stored;
               0xffffffff, version 3 with a parent only: the chunk did not
               change since the parent snapshot, which holds it)
        u32le  CRC-32 (zlib) of chunk i's bytes (0 for a zero or inherited chunk)

Saving computes the CRCs on a thread pool while the data is written
(``zlib.crc32`` releases the GIL on large buffers). Restoring maps each run
of stored chunks copy-on-write (MAP_PRIVATE) over the guest's RAM, so the
guest runs before its memory was read; the CRCs are checked by
:func:`verify` (in the background while the guest runs, or before it runs).
An incremental snapshot's region (:class:`ChainedRam`) takes each chunk
from the newest file of its chain that holds it.
"""
from __future__ import annotations

import os
import struct
import threading
import zlib
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Set, Tuple

from .. import _threads

if TYPE_CHECKING:  # concurrent.futures (and the logging it loads) only when a pool is needed: restore start-up
    from concurrent.futures import ThreadPoolExecutor

PAGE = 4096
CHUNK = 1 << 20
# Data offsets are multiples of this: the largest page size of arm64 hosts
# (64 KiB), so the file can be mapped whatever the host's page size.
DATA_ALIGN = 64 << 10
_ENTRY = struct.Struct("<II")
IN_PARENT = 0xFFFFFFFF  # a table entry's slot field: the chunk is the parent snapshot's
_ZERO_PAGE = bytes(PAGE)
_ZERO_CHUNK = bytes(CHUNK)
Progress = Optional[Callable[[int, int], None]]


class LiveRam:
    """A region's memory as :func:`pyvmm.snapshot.machine_snapshot.take`
    records it: the buffer itself (the machine stays paused until the file is
    written), saved by :func:`write_image`. ``entry`` is the manifest's region
    entry, whose ``stored_pages`` the writer fills in."""

    def __init__(self, buf, entry: Optional[Dict] = None):
        self.buf = buf
        self.size = len(buf)
        self.entry = entry

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        """The region's memory."""
        return bytes(self.buf)

    def runs(self) -> Iterator[Tuple[int, memoryview]]:
        """(offset, bytes) of each run of non-zero chunks (zero chunks skipped)."""
        view = memoryview(self.buf)
        start = None
        for off in range(0, self.size, CHUNK):
            n = min(CHUNK, self.size - off)
            zero = self.buf[off:off + n] == _ZERO_CHUNK[:n]
            if not zero and start is None:
                start = off
            elif zero and start is not None:
                yield start, view[start:off]
                start = None
        if start is not None:
            yield start, view[start:self.size]


def chunks_of(size: int, chunk: int = CHUNK) -> int:
    return -(-size // chunk)


def write_image(fd: int, data_offset: int, ram: LiveRam, progress: Progress = None,
                pool: Optional["ThreadPoolExecutor"] = None,
                changed: Optional[Set[int]] = None) -> Tuple[bytes, int, int]:
    """Write ``ram``'s non-zero chunks to ``fd`` from ``data_offset`` (zero
    pages as holes); returns (chunk table, stored chunks, non-zero pages).
    With ``changed`` (an incremental snapshot), only those chunks are looked
    at; every other one is marked as the parent's (IN_PARENT)."""
    size, buf = ram.size, ram.buf
    view = memoryview(buf)
    n_chunks = chunks_of(size)
    slots = [0] * n_chunks
    crcs: List = [0] * n_chunks
    stored = pages = 0
    from concurrent.futures import ThreadPoolExecutor

    own = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))
    try:
        for i in range(n_chunks):
            off = i * CHUNK
            n = min(CHUNK, size - off)
            if changed is not None and i not in changed:
                slots[i] = IN_PARENT
                continue
            data = buf[off:off + n]  # one copy: zero tests below are memcmp, not per byte
            if data != _ZERO_CHUNK[:n]:
                slots[i] = stored + 1
                crcs[i] = pool.submit(zlib.crc32, view[off:off + n])
                base = data_offset + stored * CHUNK
                stored += 1
                run = None
                for p in range(0, n, PAGE):
                    if data[p:p + PAGE] != _ZERO_PAGE:
                        pages += 1
                        if run is None:
                            run = p
                    elif run is not None:
                        pwrite_all(fd, view[off + run:off + p], base + run)
                        run = None
                if run is not None:
                    pwrite_all(fd, view[off + run:off + n], base + run)
            if progress:
                progress(off + n, size)
        table = b"".join(_ENTRY.pack(slots[i], crcs[i].result() if 0 < slots[i] < IN_PARENT else 0)
                         for i in range(n_chunks))
    finally:
        if own:
            pool.shutdown(wait=True)
    if ram.entry is not None:
        ram.entry["stored_pages"] = pages
    return table, stored, pages


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class MappedRam:
    """A region of a version-2 or -3 snapshot file: its chunk table
    (checked) and the file's data area, read through ``data`` (a view of the
    file's mapping) and mapped into a VM through ``fd``. A chunk marked
    IN_PARENT is read from the parent file (:class:`ChainedRam`)."""

    def __init__(self, name: str, size: int, table: bytes, data, data_offset: int, fd: int):
        self.name = name
        self.size = size
        self.data = data  # the data area: slot k at k * CHUNK
        self.data_offset = data_offset  # of the data area in the file
        self.fd = fd
        n = chunks_of(size)
        self.slots: List[int] = []  # slot of each chunk; -1: zero; -2: the parent's
        self.crcs: List[int] = []
        for i in range(n):
            slot, crc = _ENTRY.unpack_from(table, i * _ENTRY.size)
            self.slots.append(-2 if slot == IN_PARENT else slot - 1)
            self.crcs.append(crc)
        self.stored = sum(1 for s in self.slots if s >= 0)

    def __len__(self) -> int:
        """Bytes of the file's data area this region uses."""
        return self.stored * CHUNK

    def __bytes__(self) -> bytes:
        """The region's memory, read from the file (zero chunks as zeros)."""
        out = bytearray(self.size)

        def put(off: int, data) -> None:
            out[off:off + len(data)] = data
        self.copy_into(put)
        return bytes(out)

    def source(self, i: int) -> Optional[Tuple["MappedRam", int]]:
        """(the file's region, slot) that holds chunk ``i``; None for a zero chunk."""
        k = self.slots[i]
        if k == -2:
            raise ValueError(f"{self.name}: chunk {i} is in the parent snapshot, which was not loaded")
        return (self, k) if k >= 0 else None

    def chunk(self, i: int) -> memoryview:
        """Chunk ``i``'s bytes in the file that holds it (a stored chunk)."""
        src = self.source(i)
        assert src is not None, "a zero chunk has no bytes in any file"
        image, k = src
        n = min(CHUNK, self.size - i * CHUNK)
        return image.data[k * CHUNK:k * CHUNK + n]

    def _groups(self) -> Iterator[Tuple[int, "MappedRam", int, int]]:
        """(region offset, file region, first slot, length) of each run of
        stored chunks consecutive both in the region and in one file."""
        start = None
        first: Optional[Tuple[MappedRam, int]] = None
        n = chunks_of(self.size)
        for i in range(n + 1):
            src = self.source(i) if i < n else None
            if first is not None and start is not None and \
                    (src is None or src[0] is not first[0] or src[1] != first[1] + (i - start)):
                off = start * CHUNK
                yield off, first[0], first[1], min(i * CHUNK, self.size) - off
                start = first = None
            if src is not None and start is None:
                start, first = i, src

    def map_runs(self) -> Iterator[Tuple[int, int, int, int]]:
        """(region offset, file descriptor, file offset, length) of each run
        of stored chunks to map."""
        for off, image, k, n in self._groups():
            yield off, image.fd, image.data_offset + k * CHUNK, n

    def runs(self) -> Iterator[Tuple[int, int, int]]:
        """(region offset, file offset, length) of each run of stored chunks
        that are consecutive both in the region and in the file."""
        for off, _fd, file_off, n in self.map_runs():
            yield off, file_off, n

    def copy_into(self, write: Callable[[int, memoryview], None], progress: Progress = None) -> None:
        """``write(offset, bytes)`` for each run of stored chunks (read, not mapped)."""
        for off, image, k, n in self._groups():
            write(off, image.data[k * CHUNK:k * CHUNK + n])
            if progress:
                progress(off + n, self.size)
        if progress:
            progress(self.size, self.size)

    def pages(self) -> Dict[int, bytes]:
        """{offset: page} of every non-zero page (for comparing snapshots)."""
        out = {}
        for i in range(chunks_of(self.size)):
            if self.source(i) is None:
                continue
            data = bytes(self.chunk(i))
            for p in range(0, len(data), PAGE):
                if data[p:p + PAGE] != _ZERO_PAGE:
                    out[i * CHUNK + p] = data[p:p + PAGE]
        return out

    def verify(self, stop: Optional[threading.Event] = None, progress: Progress = None,
               workers: Optional[int] = None, background: bool = False) -> Optional[str]:
        """Check every stored chunk's CRC-32 (on ``workers`` threads), each
        against the table of the file that holds it; the first mismatch
        found as a sentence, or None. Ends early, with None, once ``stop``
        is set. ``background``: the threads run at a lower CPU priority
        (nice 10: a restored guest runs while its memory is checked)."""
        sources = [self.source(i) for i in range(chunks_of(self.size))]
        todo = [i for i, src in enumerate(sources) if src is not None]
        workers = max(1, min(len(todo), workers or min(8, os.cpu_count() or 1)))
        lock = threading.Lock()
        state = {"next": 0, "done": 0}
        bad: List[int] = []
        errors: List[BaseException] = []

        def work() -> None:
            if background:
                _lower_priority()
            try:
                while not bad and not (stop is not None and stop.is_set()):
                    with lock:
                        k = state["next"]
                        state["next"] = k + 1
                    if k >= len(todo):
                        return
                    i = todo[k]
                    holder = sources[i]
                    assert holder is not None
                    if zlib.crc32(self.chunk(i)) != holder[0].crcs[i]:
                        with lock:
                            bad.append(i)
                        return
                    with lock:
                        state["done"] += 1
                        if progress and state["done"] % 64 == 0:
                            progress(state["done"] * CHUNK, len(todo) * CHUNK)
            except BaseException as e:  # re-raised in the caller's thread
                with lock:
                    errors.append(e)

        threads = [_threads.start_daemon(work, (), f"pyvmm-crc-{n}") for n in range(workers - 1)]
        work()  # this thread is one of the workers
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        if bad:
            i = min(bad)
            return (f"memory chunk {i} ({i * CHUNK:#x}+{CHUNK:#x} of {self.name}) fails its CRC-32: "
                    "the file was damaged or altered after it was written")
        if progress and todo and not (stop is not None and stop.is_set()):
            progress(len(todo) * CHUNK, len(todo) * CHUNK)
        return None


def _lower_priority() -> None:
    """Give the calling thread nice 10 (Linux: setpriority on a thread id is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (OSError, AttributeError):
        pass


class ChainedRam(MappedRam):
    """A region of an incremental snapshot with its chain resolved: each
    chunk from the newest file of the chain that holds it (``owners``, from
    :func:`resolve`), mapped and checked from that file."""

    def __init__(self, newest: MappedRam, owners: List[Optional[Tuple[MappedRam, int]]]):
        self.__dict__.update(newest.__dict__)
        self.owners = owners

    def source(self, i: int) -> Optional[Tuple[MappedRam, int]]:
        return self.owners[i]


def resolve(chain: List[MappedRam]) -> ChainedRam:
    """The region whose newest file is ``chain[0]`` and oldest (a file
    without a parent) ``chain[-1]``: each chunk's holder. ValueError when the
    files do not describe one region."""
    newest = chain[0]
    owners: List[Optional[Tuple[MappedRam, int]]] = []
    for image in chain:
        if image.size != newest.size:
            raise ValueError(f"{newest.name} is {newest.size:#x} bytes in one file of the chain, {image.size:#x} "
                             "in its parent")
    for i in range(chunks_of(newest.size)):
        for image in chain:
            k = image.slots[i]
            if k != -2:
                owners.append((image, k) if k >= 0 else None)
                break
        else:
            raise ValueError(f"{newest.name}: chunk {i} is in no file of the chain")
    return ChainedRam(newest, owners)


def check_table(name: str, size: int, table, data_offset: int, stored: int, data_end: int,
                in_parent: bool = False) -> None:
    """ValueError unless the chunk table of a region of ``size`` bytes is
    well formed: one entry per chunk, slots 1..stored each used once and in
    chunk order, every slot inside the data area [data_offset, data_end);
    chunks marked IN_PARENT only when the file has a parent (``in_parent``)."""
    n = chunks_of(size)
    if len(table) != n * _ENTRY.size:
        raise ValueError(f"{name}: chunk table of {len(table)} bytes, not {n * _ENTRY.size} for {n} chunks")
    if data_offset % DATA_ALIGN:
        raise ValueError(f"{name}: data offset {data_offset:#x} is not a multiple of {DATA_ALIGN:#x}")
    if data_offset + stored * CHUNK > data_end:
        raise ValueError(f"{name}: {stored} chunks from {data_offset:#x} lie beyond the data area")
    expect = 1
    for i in range(n):
        slot, crc = _ENTRY.unpack_from(table, i * _ENTRY.size)
        if slot == IN_PARENT:
            if not in_parent:
                raise ValueError(f"{name}: chunk {i} is marked as the parent's, and the file has no parent")
            if crc:
                raise ValueError(f"{name}: the parent's chunk {i} has a CRC")
            continue
        if slot == 0:
            if crc:
                raise ValueError(f"{name}: zero chunk {i} has a CRC")
            continue
        if slot != expect:
            raise ValueError(f"{name}: chunk {i} is in slot {slot - 1}, not {expect - 1}")
        expect += 1
    if expect - 1 != stored:
        raise ValueError(f"{name}: the table stores {expect - 1} chunks, the manifest says {stored}")


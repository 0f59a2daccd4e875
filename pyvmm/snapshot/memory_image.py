"""Guest memory in a snapshot: only non-zero pages are stored.

Blob layout for one region: a bitmap (1 bit per page, little-endian bit
order within each byte, page i is bit i % 8 of byte i // 8), then the
contents of the pages whose bit is set, in order.

Both directions work on runs: zero-ness is tested a megabyte at a time
(untouched guest RAM costs one comparison per MiB), and consecutive stored
pages are copied with one slice assignment.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

PAGE = 4096
_ZERO = bytes(PAGE)
_SCAN = 256 * PAGE
_ZERO_SCAN = bytes(_SCAN)


def pack(data, progress: Optional[Callable[[int, int], None]] = None) -> Tuple[bytes, int]:
    """(blob, number of stored pages) for a region's bytes (an mmap or any
    sliceable buffer whose slices are bytes)."""
    size = len(data)
    if size % PAGE:
        raise ValueError("region size must be a multiple of the page size")
    pages = size // PAGE
    bitmap = bytearray((pages + 7) // 8)
    stored = []
    count = 0
    for base in range(0, size, _SCAN):
        chunk = bytes(data[base:base + _SCAN])  # one memcmp below, not one per page
        if chunk == _ZERO_SCAN[:len(chunk)]:
            if progress:
                progress(base + len(chunk), size)
            continue
        run_start = None
        for off in range(0, len(chunk), PAGE):
            if chunk[off:off + PAGE] != _ZERO:
                i = (base + off) // PAGE
                bitmap[i // 8] |= 1 << (i % 8)
                count += 1
                if run_start is None:
                    run_start = off
            elif run_start is not None:
                stored.append(chunk[run_start:off])
                run_start = None
        if run_start is not None:
            stored.append(chunk[run_start:])
        if progress:
            progress(base + len(chunk), size)
    return bytes(bitmap) + b"".join(stored), count


def unpack_into(blob, size: int, write: Callable[[int, memoryview], None],
                progress: Optional[Callable[[int, int], None]] = None) -> int:
    """Call ``write(offset, data)`` for each run of consecutive stored pages
    (``data`` is a whole number of pages); returns the number of pages.
    Raises ValueError when the blob does not fit ``size``."""
    pages = size // PAGE
    nbitmap = (pages + 7) // 8
    if len(blob) < nbitmap:
        raise ValueError("memory blob shorter than its page bitmap")
    bitmap = bytes(blob[:nbitmap])
    if pages % 8 and bitmap and bitmap[-1] >> (pages % 8):
        raise ValueError("memory blob marks pages beyond the region")
    count = sum(bin(b).count("1") for b in bitmap)
    if len(blob) != nbitmap + count * PAGE:
        raise ValueError("memory blob length does not match its page bitmap")
    view = memoryview(blob)
    pos = nbitmap
    run_start: Optional[int] = None  # first page of the current run

    def flush(end_page: int) -> None:
        nonlocal pos
        assert run_start is not None  # called only inside a run
        n = (end_page - run_start) * PAGE
        write(run_start * PAGE, view[pos:pos + n])
        pos += n

    for byte_index, b in enumerate(bitmap):
        first = byte_index * 8
        if b == 0xFF:
            if run_start is None:
                run_start = first
            continue
        if b == 0:
            if run_start is not None:
                flush(first)
                run_start = None
            continue
        for bit in range(8):
            if b >> bit & 1:
                if run_start is None:
                    run_start = first + bit
            elif run_start is not None:
                flush(first + bit)
                run_start = None
        if progress and byte_index % 4096 == 0:
            progress(first * PAGE, size)
    if run_start is not None:
        flush(min(len(bitmap) * 8, pages))
    if progress:
        progress(size, size)
    return count


def pages(blob, size: int) -> dict:
    """{offset: page bytes} of every stored page (for comparing snapshots);
    ``blob`` may also be a version-2 file's RAM (anything with ``pages()``)."""
    if hasattr(blob, "pages"):
        return blob.pages()
    out = {}

    def split(offset: int, data) -> None:
        for i in range(0, len(data), PAGE):
            out[offset + i] = bytes(data[i:i + PAGE])
    unpack_into(blob, size, split)
    return out

"""Guest memory in a snapshot: only non-zero pages are stored.

Blob layout for one region: a bitmap (1 bit per page, little-endian bit
order within each byte, page i is bit i % 8 of byte i // 8), then the
contents of the pages whose bit is set, in order.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

PAGE = 4096
_ZERO = bytes(PAGE)


def pack(data, progress: Optional[Callable[[int, int], None]] = None) -> Tuple[bytes, int]:
    """(blob, number of stored pages) for a region's bytes."""
    size = len(data)
    if size % PAGE:
        raise ValueError("region size must be a multiple of the page size")
    pages = size // PAGE
    bitmap = bytearray((pages + 7) // 8)
    stored = []
    view = memoryview(data)
    for i in range(pages):
        page = view[i * PAGE:(i + 1) * PAGE]
        if page != _ZERO:
            bitmap[i // 8] |= 1 << (i % 8)
            stored.append(bytes(page))
        if progress and i % 4096 == 0:
            progress(i * PAGE, size)
    if progress:
        progress(size, size)
    return bytes(bitmap) + b"".join(stored), len(stored)


def unpack_into(blob: bytes, size: int, write_page: Callable[[int, bytes], None]) -> int:
    """Call ``write_page(offset, bytes)`` for each stored page; returns the count.
    Raises ValueError when the blob does not fit ``size``."""
    pages = size // PAGE
    nbitmap = (pages + 7) // 8
    if len(blob) < nbitmap:
        raise ValueError("memory blob shorter than its page bitmap")
    bitmap = blob[:nbitmap]
    count = sum(bin(b).count("1") for b in bitmap)
    if len(blob) != nbitmap + count * PAGE:
        raise ValueError("memory blob length does not match its page bitmap")
    pos = nbitmap
    for i in range(pages):
        if bitmap[i // 8] >> (i % 8) & 1:
            write_page(i * PAGE, blob[pos:pos + PAGE])
            pos += PAGE
    return count

"""The live-migration stream (docs/migration.md): a preamble, then framed
messages both ways over one unix or TCP stream socket.

    preamble (source -> destination, once)
        8 bytes  magic b"PYVMMMIG"
        u32le    stream version (VERSION)
        u32le    page size of the page frames (a power of two, 4 KiB..64 KiB)

    frame
        u8       type (one of TYPES)
        3 bytes  zero
        u32le    payload length (at most MAX_PAYLOAD[type])
        payload

Frame types: STATE_CHECK and STATE (source: a pyvmm snapshot file without
guest memory, the first to check, the second to restore), PAGES (source:
page contents), ACCEPT / REFUSE (destination's answer to STATE_CHECK,
REFUSE with the reason), READY (destination: built and paused), GO
(source: the destination runs the guest from now on), RUNNING
(destination: it does), ABORT (either side, with the reason).

PAGES payload::

    u32le slot, u32le count (1..MAX_PAGES_PER_FRAME),
    count x u32le page index (strictly increasing), count x page contents

Nothing a peer sends is used before it is bounded: the frame length against
the type's cap (before the payload is read), page indices against the
slot's page count, the payload length against what its count implies, the
text of a reason against MAX_REASON. A malformed frame raises
:class:`StreamError` with the reason. Pure (no sockets): the functions take
and return bytes, and :func:`read_frame` reads through a ``recv_exact``
callable.
"""
from __future__ import annotations

import struct
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from ..errors import PyvmmError

MAGIC = b"PYVMMMIG"
VERSION = 1
_PREAMBLE = struct.Struct("<8sII")
_FRAME = struct.Struct("<B3sI")
_PAGES = struct.Struct("<II")
MIN_PAGE, MAX_PAGE = 4096, 65536

STATE_CHECK, STATE, PAGES, ACCEPT, REFUSE, READY, GO, RUNNING, ABORT = range(1, 10)
TYPES = {STATE_CHECK: "state-check", STATE: "state", PAGES: "pages", ACCEPT: "accept", REFUSE: "refuse",
         READY: "ready", GO: "go", RUNNING: "running", ABORT: "abort"}
MAX_PAGES_PER_FRAME = 256
MAX_STATE = 64 << 20  # the snapshot format's manifest cap
MAX_REASON = 4096
_EMPTY = (ACCEPT, READY, GO, RUNNING)


def max_payload(ftype: int, page_size: int) -> int:
    """The longest payload a frame of ``ftype`` may have."""
    if ftype in (STATE_CHECK, STATE):
        return MAX_STATE
    if ftype == PAGES:
        return _PAGES.size + MAX_PAGES_PER_FRAME * (4 + page_size)
    if ftype in (REFUSE, ABORT):
        return MAX_REASON
    return 0


class StreamError(PyvmmError):
    """A malformed or unexpected migration message (the reason is the message)."""


class Frame(NamedTuple):
    type: int
    payload: bytes

    @property
    def name(self) -> str:
        return TYPES.get(self.type, f"type {self.type}")


def preamble(page_size: int) -> bytes:
    check_page_size(page_size)
    return _PREAMBLE.pack(MAGIC, VERSION, page_size)


def check_page_size(page_size: int) -> None:
    if not MIN_PAGE <= page_size <= MAX_PAGE or page_size & (page_size - 1):
        raise StreamError(f"migration page size {page_size} is not a power of two in {MIN_PAGE}..{MAX_PAGE}")


def parse_preamble(data: bytes) -> int:
    """The page size the stream's preamble announces; StreamError for
    another protocol, version or page size."""
    if len(data) != _PREAMBLE.size:
        raise StreamError(f"migration preamble is {len(data)} bytes, not {_PREAMBLE.size}")
    magic, version, page_size = _PREAMBLE.unpack(data)
    if magic != MAGIC:
        raise StreamError("the peer is not a pyvmm migration source (bad magic)")
    if version != VERSION:
        newer = "newer" if version > VERSION else "older"
        raise StreamError(f"migration stream version {version} is {newer} than this pyvmm's {VERSION}",
                          "migrate between pyvmm versions that speak the same stream version")
    check_page_size(page_size)
    return page_size


PREAMBLE_SIZE = _PREAMBLE.size
FRAME_HEADER_SIZE = _FRAME.size


def frame(ftype: int, payload: bytes = b"") -> bytes:
    """One frame's bytes (header and payload)."""
    return frame_header(ftype, len(payload)) + payload


def parse_header(data: bytes, page_size: int, expect: Optional[Tuple[int, ...]] = None) -> Tuple[int, int]:
    """(type, payload length) of a frame header, checked: a known type (one
    of ``expect`` when given), zero reserved bytes, a length within the type's cap."""
    if len(data) != _FRAME.size:
        raise StreamError(f"frame header is {len(data)} bytes, not {_FRAME.size}")
    ftype, reserved, length = _FRAME.unpack(data)
    if ftype not in TYPES:
        raise StreamError(f"unknown migration frame type {ftype}")
    if reserved != b"\0\0\0":
        raise StreamError(f"{TYPES[ftype]} frame has non-zero reserved bytes")
    if expect is not None and ftype not in expect and ftype != ABORT:
        wanted = " or ".join(TYPES[t] for t in expect)
        raise StreamError(f"expected a {wanted} frame, got {TYPES[ftype]}")
    if ftype in _EMPTY and length:
        raise StreamError(f"{TYPES[ftype]} frame carries {length} bytes, it has none")
    cap = max_payload(ftype, page_size)
    if length > cap:
        raise StreamError(f"{TYPES[ftype]} frame of {length} bytes exceeds its limit of {cap}")
    return ftype, length


def read_frame(recv_exact: Callable[[int], bytes], page_size: int,
               expect: Optional[Tuple[int, ...]] = None) -> Frame:
    """Read one frame with ``recv_exact(n)`` (which returns exactly n bytes
    or raises); the header is checked before the payload is read."""
    ftype, length = parse_header(recv_exact(_FRAME.size), page_size, expect)
    payload = recv_exact(length) if length else b""
    if ftype != PAGES and type(payload) is not bytes:  # noqa: E721 (a page frame's buffer is used as it is)
        payload = bytes(payload)
    return Frame(ftype, payload)


def reason(payload: bytes) -> str:
    """The text of a REFUSE or ABORT payload (printable, one line)."""
    text = payload[:MAX_REASON].decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else " " for c in text).strip() or "no reason given"


def reason_payload(text: str) -> bytes:
    data = " ".join(text.split()).encode("utf-8")
    return data[:MAX_REASON]


def encode_pages(slot: int, indices: Sequence[int], contents: Union[List[bytes], bytes], page_size: int) -> bytes:
    """A PAGES payload: ``indices`` (strictly increasing) with their
    ``contents``: one page each, or all of them as one bytes object."""
    if isinstance(contents, list):
        if len(indices) != len(contents) or any(len(c) != page_size for c in contents):
            raise ValueError("page contents must be one page each, one per index")
        contents = b"".join(contents)
    return pages_head(slot, indices, len(contents), page_size) + contents


def pages_head(slot: int, indices: Sequence[int], length: int, page_size: int) -> bytes:
    """A PAGES payload up to its contents (``length`` bytes of them, sent
    behind it): what :func:`encode_pages` puts before the contents."""
    if not 1 <= len(indices) <= MAX_PAGES_PER_FRAME or length != len(indices) * page_size:
        raise ValueError(f"a pages frame holds 1..{MAX_PAGES_PER_FRAME} pages with their contents")
    return _PAGES.pack(slot, len(indices)) + struct.pack(f"<{len(indices)}I", *indices)


def frame_header(ftype: int, length: int) -> bytes:
    """The header of a frame of ``length`` payload bytes (:func:`frame` without the payload)."""
    if ftype not in TYPES:
        raise ValueError(f"unknown frame type {ftype}")
    return _FRAME.pack(ftype, b"\0\0\0", length)


def _check_pages_head(head: bytes, length: int, slot_pages: Dict[int, int], page_size: int) -> Tuple[int, int]:
    """(slot, count) of a PAGES payload of ``length`` bytes starting with ``head``, checked."""
    if length < _PAGES.size:
        raise StreamError(f"pages frame of {length} bytes is shorter than its header")
    slot, count = _PAGES.unpack_from(head)
    if slot not in slot_pages:
        raise StreamError(f"pages frame for slot {slot}, which guest RAM does not have")
    if not 1 <= count <= MAX_PAGES_PER_FRAME:
        raise StreamError(f"pages frame with {count} pages, not 1..{MAX_PAGES_PER_FRAME}")
    want = _PAGES.size + count * (4 + page_size)
    if length != want:
        raise StreamError(f"pages frame of {length} bytes, {count} pages make {want}")
    return slot, count


def _check_indices(data, count: int, slot: int, npages: int) -> List[int]:
    indices = list(struct.unpack_from(f"<{count}I", data))
    first, last = indices[0], indices[-1]
    # One run of consecutive pages (round 1's frames): compared as a whole, not page by page.
    if last < npages and last - first == count - 1 and indices == list(range(first, last + 1)):
        return indices
    prev = -1
    for i in indices:
        if i >= npages:
            raise StreamError(f"pages frame names page {i} of slot {slot}, which has {npages} pages")
        if i <= prev:
            raise StreamError(f"pages frame indices are not strictly increasing ({prev} then {i})")
        prev = i
    return indices


def decode_pages(payload: bytes, slot_pages: Dict[int, int], page_size: int) -> Tuple[int, List[int], memoryview]:
    """(slot, page indices, their contents as one view) of a PAGES payload,
    every field checked against ``slot_pages`` (slot -> its page count)."""
    slot, count = _check_pages_head(payload, len(payload), slot_pages, page_size)
    view = memoryview(payload)
    indices = _check_indices(view[_PAGES.size:_PAGES.size + 4 * count], count, slot, slot_pages[slot])
    return slot, indices, view[_PAGES.size + 4 * count:]


def runs(indices: List[int]) -> List[Tuple[int, int, int]]:
    """(position in ``indices``, first page, page count) of each run of
    consecutive pages in the strictly increasing ``indices``."""
    if indices and indices[-1] - indices[0] == len(indices) - 1:  # strictly increasing: one run
        return [(0, indices[0], len(indices))]
    out: List[Tuple[int, int, int]] = []
    start = 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1:
            out.append((start, indices[start], k - start))
            start = k
    return out


def read_pages_into(recv_exact: Callable[[int], bytes], recv_into: Callable[[memoryview], None], length: int,
                    slot_pages: Dict[int, int], page_size: int,
                    memory: Callable[[int], memoryview],
                    before: Optional[Callable[[int, int, int], None]] = None) -> Tuple[int, List[int]]:
    """Read the payload (``length`` bytes, its frame header read and checked)
    of a PAGES frame with its contents received straight into
    ``memory(slot)`` (the slot's writable view), one ``recv_into`` per run
    of consecutive pages: (slot, page indices). The slot, count, length and
    every index are checked, as by :func:`decode_pages`, before a byte of
    the contents is read. ``before(slot, first page, count)`` is called
    before each run is received (e.g. to allocate its pages at once)."""
    if length < _PAGES.size:
        raise StreamError(f"pages frame of {length} bytes is shorter than its header")
    slot, count = _check_pages_head(recv_exact(_PAGES.size), length, slot_pages, page_size)
    indices = _check_indices(recv_exact(4 * count), count, slot, slot_pages[slot])
    mem = memory(slot)
    if len(mem) < slot_pages[slot] * page_size:
        raise ValueError(f"slot {slot}'s memory view is shorter than its {slot_pages[slot]} pages")
    for _, first, n in runs(indices):
        if before is not None:
            before(slot, first, n)
        recv_into(mem[first * page_size:(first + n) * page_size])
    return slot, indices


def batches(indices: List[int], size: int = MAX_PAGES_PER_FRAME):
    """``indices`` cut into lists of at most ``size``."""
    for i in range(0, len(indices), size):
        yield indices[i:i + size]

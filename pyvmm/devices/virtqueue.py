"""Split virtqueues (virtio 1.2, section 2.7), device side.

Every guest-supplied address, length and index is checked before use: ring
and descriptor addresses must lie entirely in guest RAM (all access goes
through the GuestMemory accessor, which refuses anything else), indices must
be below the queue size, a chain may not be longer than the table it lives in
(no loops), indirect tables may not nest, and a chain may not describe more
than MAX_CHAIN_BYTES. A violation raises :class:`VirtqueueError`; the
transport then puts the device into its error state (DEVICE_NEEDS_RESET).

With VIRTIO_RING_F_EVENT_IDX negotiated (2.7.7, 2.7.10; ``event_idx``) the
queue publishes avail_event (the next available index it will look at) each
time it finds the ring empty, then looks again: while it drains, the driver
does not notify. It interrupts only when the used index crossed the
driver's used_event since it last looked (the first time always). Both are the device's half of
a store-then-load handshake with the driver, so each needs a full memory
barrier between its store and its load (:func:`fence`); without one (no
libatomic) the feature is not offered (:func:`event_idx_offer`).
"""
from __future__ import annotations

import _struct as struct  # struct's C core, without the struct module (start-up time)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .._ffi import ffi
from .._record import field, record
from ..errors import GuestError

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTIO_RING_F_EVENT_IDX = 1 << 29
DESC_SIZE = 16
MAX_QUEUE_SIZE = 32768  # 2.7: "Queue Size ... maximum 32768"
MAX_CHAIN_BYTES = 128 << 20
# The most a device copies out of (or into) guest RAM at once: chains are
# streamed in pieces of this size, so what a device holds in host memory
# per notify, and in total, is bounded by it whatever the guest queues
# (a 128 MiB chain is 512 pieces, never one 128 MiB buffer).
IO_CHUNK = 256 << 10
_U64_MAX = (1 << 64) - 1

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


def _load_fence() -> Optional[Callable[[], None]]:
    """C11 atomic_thread_fence(memory_order_seq_cst) from libatomic (a
    ``dmb ish`` on arm64), or None when the library is missing."""
    try:
        lib = ffi.dlopen("libatomic.so.1")
        fn = lib.atomic_thread_fence
    except (OSError, AttributeError):
        return None
    _keep.append(lib)  # closing the library would unmap fn
    return lambda: fn(5)


_keep: List[object] = []


def _not_loaded() -> None:
    raise RuntimeError("the virtqueue fence was used before have_fence() loaded it")


# The full fence, loaded by have_fence on first use (not at import: pyvmm's
# start-up); a queue has event_idx only once it was loaded.
fence: Callable[[], None] = _not_loaded
_have: Optional[bool] = None


def have_fence() -> bool:
    """Whether there is a full fence (:data:`fence`, loaded here once)."""
    global fence, _have
    if _have is None:
        loaded = _load_fence()
        if loaded is not None:
            fence = loaded
        _have = loaded is not None
    return _have


def event_idx_offer() -> int:
    """The ring feature a Python backend may offer: EVENT_IDX when there is a fence."""
    return VIRTIO_RING_F_EVENT_IDX if have_fence() else 0


class VirtqueueError(GuestError):
    """The driver broke the virtqueue rules; the device must be reset."""


if TYPE_CHECKING:
    Segment = Tuple[int, int]  # (guest physical address, length)


@record
class Chain:
    head: int
    readable: List[Segment] = field(default_factory=list)
    writable: List[Segment] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)


def read_segments(mem, segs: List[Segment], offset: int = 0, length: Optional[int] = None) -> bytes:
    """Bytes [offset, offset+length) of the concatenation of ``segs``."""
    out = []
    want = None if length is None else length
    for addr, n in segs:
        if offset >= n:
            offset -= n
            continue
        take = n - offset if want is None else min(n - offset, want)
        out.append(mem.read(addr + offset, take))
        offset = 0
        if want is not None:
            want -= take
            if want == 0:
                break
    return b"".join(out)


def iter_segments(mem, segs: List[Segment], offset: int = 0, length: Optional[int] = None,
                  chunk: int = IO_CHUNK) -> Iterator[bytes]:
    """Bytes [offset, offset+length) of the concatenation of ``segs``, in
    pieces of at most ``chunk`` bytes: never more than one piece in memory."""
    want = None if length is None else length
    for addr, n in segs:
        if offset >= n:
            offset -= n
            continue
        pos, end = addr + offset, addr + n
        offset = 0
        while pos < end:
            take = min(chunk, end - pos) if want is None else min(chunk, end - pos, want)
            if take <= 0:
                return
            yield mem.read(pos, take)
            pos += take
            if want is not None:
                want -= take
                if want == 0:
                    return


def write_segments(mem, segs: List[Segment], data: bytes, offset: int = 0) -> int:
    """Scatter ``data`` into ``segs`` starting ``offset`` bytes in; returns bytes written."""
    pos = 0
    for addr, n in segs:
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, len(data) - pos)
        if take <= 0:
            break
        mem.write(addr + offset, data[pos:pos + take])
        pos += take
        offset = 0
    return pos


class Virtqueue:
    def __init__(self, mem, max_size: int = 256):
        if not 1 <= max_size <= MAX_QUEUE_SIZE:
            raise ValueError("bad queue size")
        self.mem = mem
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.last_avail = 0
        self.used_idx = 0
        self.event_idx = False  # VIRTIO_RING_F_EVENT_IDX negotiated (the transport sets it)
        self.signalled: Optional[int] = None  # the used index wants_interrupt last looked at (None: unknown)

    # -- set-up ---------------------------------------------------------------
    def activate(self) -> None:
        """Check the ring geometry the driver wrote (2.7: alignment 16/2/4)."""
        self._check_geometry(self.size, self.desc_addr, self.avail_addr, self.used_addr)
        self.ready = True

    def _check_geometry(self, size: int, desc_addr: int, avail_addr: int, used_addr: int) -> None:
        if not 1 <= size <= self.max_size or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of two in 1..{self.max_size}")
        for what, addr, length, align in (("descriptor table", desc_addr, DESC_SIZE * size, 16),
                                          ("available ring", avail_addr, 6 + 2 * size, 2),
                                          ("used ring", used_addr, 6 + 8 * size, 4)):
            if addr % align:
                raise VirtqueueError(f"{what} at {addr:#x} is not {align}-byte aligned")
            if not self.mem.contains(addr, length):
                raise VirtqueueError(f"{what} at {addr:#x}+{length:#x} is outside guest RAM")

    # -- snapshot -------------------------------------------------------------
    _STATE_KEYS = ("max_size", "size", "ready", "desc_addr", "avail_addr", "used_addr", "last_avail", "used_idx")

    def save_state(self) -> Dict:
        """The queue's registers and ring positions. The rings themselves are
        in guest RAM, which the machine snapshot saves."""
        return {"max_size": self.max_size, "size": self.size, "ready": self.ready,
                "desc_addr": self.desc_addr, "avail_addr": self.avail_addr, "used_addr": self.used_addr,
                "last_avail": self.last_avail, "used_idx": self.used_idx}

    def check_state(self, state: Dict, what: str = "virtqueue") -> Dict:
        """The attributes ``state`` would set, checked (UsageProblem if not):
        the maximum size must be this queue's, and a ready queue's geometry
        must pass :meth:`activate`'s checks against this guest RAM, so a
        damaged snapshot cannot point the rings outside it."""
        from .state import StateReader  # loaded to read a state, not to run (start-up time)

        r = StateReader(what, state, self._STATE_KEYS)
        max_size = r.int("max_size", 1, MAX_QUEUE_SIZE)
        if max_size != self.max_size:
            raise r.fail(f"maximum size {max_size} is not this queue's {self.max_size}")
        attrs = {"size": r.int("size", 0, 0xFFFFFFFF), "ready": r.bool("ready"),
                 "desc_addr": r.int("desc_addr", 0, _U64_MAX), "avail_addr": r.int("avail_addr", 0, _U64_MAX),
                 "used_addr": r.int("used_addr", 0, _U64_MAX), "last_avail": r.int("last_avail", 0, 0xFFFF),
                 "used_idx": r.int("used_idx", 0, 0xFFFF)}
        if attrs["ready"]:
            try:
                self._check_geometry(attrs["size"], attrs["desc_addr"], attrs["avail_addr"], attrs["used_addr"])
            except VirtqueueError as e:
                raise r.fail(f"ready queue refused: {e}") from None
        return attrs

    def load_state(self, state: Dict, what: str = "virtqueue") -> None:
        """Take a state from :meth:`save_state` (checked first: see :meth:`check_state`)."""
        self.apply_state(self.check_state(state, what))

    def apply_state(self, attrs: Dict) -> None:
        for name, value in attrs.items():
            setattr(self, name, value)
        self.signalled = None  # the next used buffers interrupt whatever used_event says

    # -- the rings ------------------------------------------------------------
    def _u16(self, addr: int) -> int:
        return _U16.unpack(self.mem.read(addr, 2))[0]

    def pending(self) -> int:
        n = (_U16.unpack(self.mem.read(self.avail_addr + 2, 2))[0] - self.last_avail) & 0xFFFF
        if n > self.size:
            raise VirtqueueError(f"available index moved by {n}, more than the queue size {self.size}")
        return n

    def pop(self) -> Optional[Chain]:
        """The next available descriptor chain, or None. With event_idx, an
        empty ring publishes avail_event = last_avail (notify me when you
        make that entry available) and is looked at once more after a fence:
        an entry the driver made available meanwhile is either seen here or
        was made after the driver could see avail_event, and is notified."""
        if not self.ready:
            return None
        if self.pending() == 0:
            if not self.event_idx:
                return None
            self.mem.write(self.used_addr + 4 + 8 * self.size, _U16.pack(self.last_avail))
            fence()
            if self.pending() == 0:
                return None
        head = _U16.unpack(self.mem.read(self.avail_addr + 4 + 2 * (self.last_avail % self.size), 2))[0]
        if head >= self.size:
            raise VirtqueueError(f"available ring entry {head} is not below the queue size {self.size}")
        chain = self._walk(head)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return chain

    def _walk(self, head: int) -> Chain:
        chain = Chain(head, [], [])  # every field given: the record's quick __init__ (a chain per request)
        table, table_size = self.desc_addr, self.size
        idx, seen, total, indirect = head, 0, 0, False
        while True:
            if idx >= table_size:
                raise VirtqueueError(f"descriptor index {idx} is not below the table size {table_size}")
            seen += 1
            if seen > table_size:
                raise VirtqueueError(f"descriptor chain from {head} is longer than its table (a loop)")
            addr, length, flags, nxt = _DESC.unpack(self.mem.read(table + DESC_SIZE * idx, DESC_SIZE))
            if flags & VIRTQ_DESC_F_INDIRECT:
                if indirect:
                    raise VirtqueueError("nested indirect descriptor table")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise VirtqueueError("indirect descriptor with NEXT set")
                if length == 0 or length % DESC_SIZE or length // DESC_SIZE > MAX_QUEUE_SIZE:
                    raise VirtqueueError(f"indirect table length {length} is not a multiple of 16 in 16..512K")
                if not self.mem.contains(addr, length):
                    raise VirtqueueError(f"indirect table at {addr:#x}+{length:#x} is outside guest RAM")
                table, table_size, idx, seen, indirect = addr, length // DESC_SIZE, 0, 0, True
                continue
            if not self.mem.contains(addr, length):
                raise VirtqueueError(f"buffer {addr:#x}+{length:#x} is outside guest RAM")
            total += length
            if total > MAX_CHAIN_BYTES:
                raise VirtqueueError(f"descriptor chain describes more than {MAX_CHAIN_BYTES} bytes")
            if flags & VIRTQ_DESC_F_WRITE:
                chain.writable.append((addr, length))
            else:
                if chain.writable:
                    raise VirtqueueError("device-readable descriptor after a device-writable one")
                chain.readable.append((addr, length))
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            idx = nxt

    def push(self, head: int, written: int) -> None:
        """Return chain ``head`` to the driver with ``written`` bytes written."""
        slot = self.used_addr + 4 + 8 * (self.used_idx % self.size)
        self.mem.write(slot, _USED_ELEM.pack(head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        # The element is stored before the index; the interrupt that follows is
        # delivered through a system call, which orders both for the guest.
        self.mem.write(self.used_addr + 2, _U16.pack(self.used_idx))

    def wants_interrupt(self) -> bool:
        """Whether the used buffers pushed since the last call need an interrupt:
        without event_idx unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT;
        with it when the used index went past used_event (2.7.10), read after
        a fence so a used_event the driver wrote before it looked at the used
        index is seen. An interrupt is assumed to follow a True."""
        if not self.event_idx:
            return not self._u16(self.avail_addr) & VIRTQ_AVAIL_F_NO_INTERRUPT
        fence()
        event = self._u16(self.avail_addr + 4 + 2 * self.size)
        new, old = self.used_idx, self.signalled
        if old == new:
            return False
        self.signalled = new
        return old is None or (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF

"""vhost's own dirty log: the pages of guest RAM a kernel vhost back end
wrote, for a live migration or an incremental snapshot of a machine whose
data plane it is (pyvmm/dirty_log.py merges them with KVM's).

The kernel's side (include/uapi/linux/vhost.h, drivers/vhost/vhost.c):
``VHOST_SET_LOG_BASE`` gives vhost a bitmap in this process, one bit per
4 KiB (``VHOST_PAGE_SIZE``) of *guest physical* address counted from 0
(page p is bit p % 8 of byte p // 8, as in KVM's bitmaps); the feature bit
``VHOST_F_LOG_ALL`` makes it log the buffers it writes, and a ring whose
``VHOST_SET_VRING_ADDR`` carries ``VHOST_VRING_F_LOG`` with the used ring's
guest physical address logs its used-ring writes too. vhost sets the bits
atomically; clearing them from Python could lose a bit set meanwhile, so
two bitmaps take turns (:class:`VhostLog`): each look points every back
end at the other one and only then reads and clears the old one.

Why no write can reach the old bitmap after the switch: vhost.c's
``VHOST_SET_LOG_BASE`` stores each ring's new base under that ring's
``vq->mutex``, and the rings' handlers (``handle_rx``/``handle_tx`` of
vhost-net, whose ``vhost_log_write`` and ``vhost_add_used`` -> ``log_used``
read ``vq->log_base``) run with the same mutex held: once the ioctl has
returned, a handler that was writing to the old bitmap has finished, and
later ones use the new base.

Which back ends log everything they write: vhost-net logs the receive
buffers it fills (``vhost_log_write`` in ``handle_rx``) and both used
rings. vhost-vsock (drivers/vhost/vsock.c, Linux 7.3) passes no log to
``vhost_get_vq_desc`` and never calls ``vhost_log_write``: the packets it
writes into the guest's receive buffers are not logged, only its used
rings. Its machines stay refused (pyvmm/snapshot/vhost_log.py).

The bitmap-to-slot translation (:func:`slot_pages`) and the swap are pure
(tests/host/test_vhost_dirty.py drives them with a fake back end).
"""
from __future__ import annotations

import mmap
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

from .._ffi import ffi
from ..dirty_log import bitmap_pages, each

VHOST_PAGE = 0x1000  # VHOST_PAGE_SIZE: what one bit of the log covers
MAX_LOG_BYTES = 1 << 30  # a bitmap for guest RAM ending below 32 TiB


def log_bytes(ram_end: int) -> int:
    """The size of a log covering guest physical addresses 0..ram_end-1, in
    whole 64-bit words."""
    if ram_end <= 0:
        raise ValueError(f"guest RAM ends at {ram_end:#x}")
    n = (ram_end + VHOST_PAGE * 64 - 1) // (VHOST_PAGE * 64) * 8
    if n > MAX_LOG_BYTES:
        raise ValueError(f"guest RAM ending at {ram_end:#x} needs a vhost log of {n} bytes")
    return n


def slot_pages(bitmap, regions: Iterable[Tuple[int, int, int]], page: int) -> Dict[int, List[int]]:
    """{slot: sorted host page indices} of the guest RAM ``regions`` ((slot,
    guest physical address, size)) that ``bitmap`` (vhost's log) marks.
    Only each region's own stretch of the bitmap is read; bits outside guest
    RAM are ignored. ``page`` is the host page (a multiple of 4 KiB);
    regions start and end on host pages."""
    if page % VHOST_PAGE:
        raise ValueError(f"host page {page} is not a multiple of {VHOST_PAGE}")
    view = memoryview(bitmap).cast("B")
    out: Dict[int, List[int]] = {}
    for slot, gpa, size in regions:
        if gpa % page or size % page:
            raise ValueError(f"slot {slot} at {gpa:#x} ({size:#x} bytes) is not on {page}-byte pages")
        first, n = gpa // VHOST_PAGE, size // VHOST_PAGE
        lo, hi = first // 8, (first + n + 7) // 8
        if hi > len(view):
            raise ValueError(f"slot {slot} ends past the {len(view)}-byte vhost log")
        shift = first % 8
        bits = bitmap_pages(view[lo:hi], shift + n)
        pages = sorted({(b - shift) * VHOST_PAGE // page for b in bits if b >= shift})
        if pages:
            out[slot] = pages
    return out


class Bitmap:
    """A log bitmap in anonymous memory of this process (page-aligned, never moved)."""

    def __init__(self, size: int):
        self.mm = mmap.mmap(-1, max(size, mmap.PAGESIZE))
        self.size = size
        self.address = int(ffi.cast("uintptr_t", ffi.from_buffer(self.mm)))

    def view(self) -> memoryview:
        return memoryview(self.mm)[:self.size]

    def clear(self) -> None:
        self.mm[:self.size] = bytes(self.size)

    def close(self) -> None:
        self.mm.close()


class VhostLog:
    """The dirty log of the vhost back ends ``targets`` of one machine whose
    guest RAM is ``regions`` ((slot, gpa, size) per writable slot).

    A target has ``log_start(address)`` (log to the bitmap at ``address``:
    the base, the used rings' flag, VHOST_F_LOG_ALL), ``log_to(address)``
    (another bitmap from now on) and ``log_stop()``. ``alloc(size)`` makes a
    bitmap (:class:`Bitmap`; a fake in host tests)."""

    def __init__(self, targets: Sequence, regions: Sequence[Tuple[int, int, int]], page: int,
                 alloc: Callable[[int], Bitmap] = Bitmap):
        self.targets = list(targets)
        self.regions = list(regions)
        self.page = page
        self.alloc = alloc
        self.active = False
        self._maps: List[Bitmap] = []
        self._cur = 0  # the bitmap the back ends log to

    def start(self) -> None:
        if self.active or not self.targets:
            return
        size = log_bytes(max(gpa + size for _, gpa, size in self.regions))
        self._maps = []
        done = []
        try:
            self._maps = [self.alloc(size), self.alloc(size)]
            self._cur = 0
            for t in self.targets:
                t.log_start(self._maps[0].address)
                done.append(t)
        except BaseException:
            for t in done:
                try:
                    t.log_stop()
                except OSError:
                    pass
            self._free()
            raise
        self.active = True

    def collect(self) -> Dict[int, List[int]]:
        """{slot: sorted page indices} the back ends wrote since start or
        the previous collect: every back end is pointed at the other bitmap,
        then the old one is read and cleared (see the module docstring)."""
        if not self.active:
            return {}
        old, new = self._maps[self._cur], self._maps[1 - self._cur]
        for t in self.targets:
            t.log_to(new.address)
        self._cur = 1 - self._cur
        found = slot_pages(old.view(), self.regions, self.page)
        old.clear()
        return found

    def stop(self) -> None:
        """Logging off on every back end; idempotent. The first failure is
        raised after all were tried."""
        if not self.active:
            return
        self.active = False
        first = each(self.targets, lambda t: t.log_stop())
        if first is not None:
            # A back end may still log: its bitmaps stay mapped (freed, the
            # addresses could be reused by other memory of this process).
            self._maps = []
            raise first
        self._free()

    def _free(self) -> None:
        for b in self._maps:
            b.close()
        self._maps = []

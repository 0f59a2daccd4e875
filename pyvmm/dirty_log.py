"""Dirty page tracking: which pages of guest RAM changed since the last look.

Three writers change guest RAM while a guest runs: the guest itself (its
stores go straight to the mapping; KVM logs them), pyvmm's device
models (virtqueue buffers and used rings written through
:meth:`pyvmm.memory.GuestMemory.write`, which records them) and vhost back
ends (their own logs, pyvmm/vhost/dirty.py, given as ``extra``). A
:class:`DirtyLog` merges them:

    log = DirtyLog(vm, mem)
    log.start()               # KVM_MEM_LOG_DIRTY_PAGES on every writable slot
    pages = log.collect()     # {slot: sorted page indices} written since start/last collect
    log.stop()                # slots back to their flags, no more logging

KVM side: ``KVM_MEM_LOG_DIRTY_PAGES`` set on each slot with
KVM_SET_USER_MEMORY_REGION, then ``KVM_GET_DIRTY_LOG`` per slot. Where KVM
offers ``KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`` it is enabled: GET only reads
the bitmap, and ``KVM_CLEAR_DIRTY_LOG`` re-protects just the pages that
were dirty (without it, GET re-protects the whole slot under the MMU lock).
Either way, a page is write-protected again *before* its contents are read
by the caller, so a store after :meth:`collect` shows up in the next one.
docs/migration.md says why this and not the dirty ring.

Pages are host pages (``mmap.PAGESIZE``); indices count from the slot's
first page. The bitmap helpers are pure (tests/host/test_dirty_log.py).
"""
from __future__ import annotations

import mmap
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from ._ffi import const
from .errors import KvmError

PAGE = mmap.PAGESIZE


def bitmap_bytes(npages: int) -> int:
    """The size of KVM's dirty bitmap for ``npages`` pages: one bit per page
    in whole 64-bit words."""
    if npages < 0:
        raise ValueError(f"page count {npages} is negative")
    return (npages + 63) // 64 * 8


def bitmap_pages(bitmap, npages: int) -> List[int]:
    """The set bits of a dirty bitmap (little-endian 64-bit words: page i is
    bit i % 8 of byte i // 8) below ``npages``, ascending. Bits at or past
    ``npages`` (padding of the last word) are ignored."""
    view = memoryview(bitmap).cast("B")
    if len(view) < (npages + 7) // 8:
        raise ValueError(f"dirty bitmap of {len(view)} bytes is too short for {npages} pages")
    out: List[int] = []
    nbytes = (npages + 7) // 8
    step = 4096  # bytes of bitmap compared at once: clean stretches cost one comparison
    zero = bytes(step)
    for base in range(0, nbytes, step):
        chunk = bytes(view[base:min(base + step, nbytes)])
        if chunk == zero[:len(chunk)]:
            continue
        # the chunk's bits as text, bit i at index i: one find per set bit
        # (not one loop step per byte: the pause's last look pays for it)
        bits = format(int.from_bytes(chunk, "little"), "b")[::-1]
        first = base * 8
        i = bits.find("1")
        while i >= 0 and first + i < npages:
            out.append(first + i)
            i = bits.find("1", i + 1)
    return out


def pages_bitmap(pages: Iterable[int], npages: int) -> bytearray:
    """The dirty bitmap (KVM's layout, :func:`bitmap_bytes` long) with ``pages`` set;
    ValueError for an index outside 0..npages-1."""
    bm = bytearray(bitmap_bytes(npages))
    for p in pages:
        if not 0 <= p < npages:
            raise ValueError(f"page {p} is outside the slot's {npages} pages")
        bm[p >> 3] |= 1 << (p & 7)
    return bm


def each(items: Iterable, fn: Callable) -> Optional[OSError]:
    """``fn(item)`` for every item, even after one failed: the first OSError, or None."""
    first: Optional[OSError] = None
    for item in items:
        try:
            fn(item)
        except OSError as e:
            first = first or e
    return first


def merge(*parts: Mapping[int, Iterable[int]]) -> Dict[int, List[int]]:
    """Per-slot union of page index collections, each list sorted."""
    out: Dict[int, set] = {}
    for part in parts:
        for slot, pages in part.items():
            out.setdefault(slot, set()).update(pages)
    return {slot: sorted(pages) for slot, pages in out.items()}


class DirtyLog:
    """Dirty logging of every writable slot of ``mem`` (a
    :class:`pyvmm.memory.GuestMemory` registered in ``vm``, a
    :class:`pyvmm.vm.Vm`)."""

    def __init__(self, vm, mem, extra: Sequence = ()):
        self.vm = vm
        self.mem = mem
        # other writers' logs (start(), collect() -> {slot: pages}, stop()):
        # the vhost back ends' (pyvmm/vhost/dirty.py)
        self.extra = list(extra)
        self.manual = False  # KVM_CLEAR_DIRTY_LOG in use
        self.active = False
        self._bitmaps: Dict[int, bytearray] = {}
        self.slowest_ms = 0.0  # the longest collect() so far

    def _slots(self):
        return [r for r in self.mem.regions if not r.readonly]

    def start(self) -> None:
        """Turn logging on; what was written before does not count (the
        caller copies all of memory once after this)."""
        if self.active:
            return
        if self.vm.check_extension(const("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")) > 0:
            try:
                self.vm.enable_cap(const("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2"),
                                   const("KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE"))
                self.manual = True
            except KvmError:
                self.manual = False
        self.mem.track_writes(True)
        done = []
        try:
            for r in self._slots():
                self.vm.set_user_memory_region(r.slot, r.gpa, r.size, r.host_address(),
                                               const("KVM_MEM_LOG_DIRTY_PAGES"))
                done.append(r)
                self._bitmaps[r.slot] = bytearray(bitmap_bytes(r.size // PAGE))
            started = []
            try:
                for e in self.extra:
                    e.start()
                    started.append(e)
            except BaseException:
                for e in started:
                    e.stop()
                raise
        except BaseException:
            for r in done:
                self._unlog(r)
            self.mem.track_writes(False)
            raise
        self.active = True

    def collect(self, protect: bool = True) -> Dict[int, List[int]]:
        """{slot: sorted page indices} written (by the guest or by pyvmm)
        since :meth:`start` or the previous collect. Those pages are
        write-protected again before this returns, unless ``protect`` is
        False: the last look, with the guest paused and the log stopped
        before it runs again (with KVM_CLEAR_DIRTY_LOG, re-protecting
        costs a stage-2 change and TLB invalidation per run of pages)."""
        if not self.active:
            raise RuntimeError("dirty logging is not started")
        t0 = time.monotonic()
        found: Dict[int, List[int]] = {}
        for r in self._slots():
            npages = r.size // PAGE
            bm = self._bitmaps[r.slot]
            self.vm.get_dirty_log(r.slot, bm)
            pages = bitmap_pages(bm, npages)
            if pages and self.manual and protect:
                self.vm.clear_dirty_log(r.slot, 0, npages, bm)
            if pages:
                found[r.slot] = pages
        out = merge(found, self.mem.take_written(), *[e.collect() for e in self.extra])
        self.slowest_ms = max(self.slowest_ms, (time.monotonic() - t0) * 1000)
        return out

    def _unlog(self, r) -> None:
        self.vm.set_user_memory_region(r.slot, r.gpa, r.size, r.host_address(), 0)

    def stop(self) -> None:
        """Logging off (the slots as they were); idempotent."""
        if not self.active:
            return
        self.active = False
        self.mem.track_writes(False)
        first = each(self.extra, lambda e: e.stop())
        first = each(self._slots(), self._unlog) or first
        self._bitmaps = {}
        if first is not None:
            raise first

"""The VM's coalesced-MMIO ring, replayed on the bus (:class:`CoalescedRing`)."""
from __future__ import annotations

import mmap
from .. import _threads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Optional

from .._ffi import ffi
from ..errors import GuestError
from .console import OutputBuffer


class CoalescedRing:
    """The VM's coalesced-MMIO ring (virt/kvm/coalesced_mmio.c): KVM appends
    guest writes to registered zones here instead of exiting; pyvmm replays
    them on the bus, in order, before handling any other exit and from the
    main thread every few milliseconds (so output of an idle guest appears).
    The ring is one page at KVM_CAP_COALESCED_MMIO's page offset in a vCPU
    mapping; entries are consumed by advancing ``first`` (KVM writes ``last``)."""

    ENTRY = 24  # sizeof(struct kvm_coalesced_mmio)

    def __init__(self, vcpu_fd: int, page_offset: int, bus, out: Optional[OutputBuffer] = None):
        self.bus = bus
        self.out = out
        self.mm = mmap.mmap(vcpu_fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                            offset=page_offset * mmap.PAGESIZE)
        self.ring = ffi.from_buffer("struct kvm_coalesced_mmio_ring *", self.mm)
        self.max = (mmap.PAGESIZE - 8) // self.ENTRY  # KVM_COALESCED_MMIO_MAX
        self.lock = _threads.Lock()
        self.entries = 0

    def pending(self) -> bool:
        ring = self.ring
        return ring is not None and ring.first != ring.last

    def drain(self) -> None:
        with self.lock:
            ring = self.ring
            if ring is None:
                return
            if self.out is not None:
                self.out.batching += 1
            try:
                self._drain(ring)
            finally:
                if self.out is not None:
                    self.out.batching -= 1
                    self.out.flush()

    def _drain(self, ring) -> None:
        first, last = ring.first, ring.last
        while first != last:
            if first >= self.max:
                raise GuestError(f"coalesced MMIO ring index {first} out of range")
            e = ring.coalesced_mmio[first]
            addr, data = e.phys_addr, ffi.buffer(e.data, min(e.len, 8))[:]
            first = (first + 1) % self.max
            # the entry is copied out before KVM may reuse its slot
            ring.first = first
            self.entries += 1
            self.bus.write(addr, data)

    def close(self) -> None:
        with self.lock:
            self.ring = None
        try:
            self.mm.close()
        except BufferError:
            pass

"""The MMIO bus: maps guest physical ranges to devices, refuses overlaps.

A device on the bus implements ``read(offset, length) -> bytes`` and
``write(offset, data)``; offsets are relative to its base. A device may
also offer ``fast_reads() -> {offset: fn}``: 4-byte registers the vCPU
thread reads by calling ``fn()`` (4 bytes) straight from its exit handler,
without the lookup and the device's general read path.
"""
from __future__ import annotations

from _bisect import bisect_right  # bisect's C core, without the bisect module (start-up time)
from .. import _threads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Protocol, Tuple

from .._record import record
from ..errors import PyvmmError


if TYPE_CHECKING:
    class MmioDevice(Protocol):
        def read(self, offset: int, length: int) -> bytes: ...

        def write(self, offset: int, data: bytes) -> None: ...


class BusOverlap(PyvmmError):
    """Two devices were asked to share guest physical addresses."""


@record(frozen=True)
class Mapping:
    base: int
    size: int
    device: MmioDevice
    name: str

    @property
    def end(self) -> int:
        return self.base + self.size


class MmioBus:
    def __init__(self):
        self._table: Tuple[List[Mapping], List[int]] = ([], [])  # mappings and their bases, by base
        self._lock = _threads.Lock()
        self.unhandled = 0  # accesses that hit no device
        self.trace = None  # a dict counting (device, offset, r/w) when tracing (--debug)
        # guest physical address -> the 4-byte read of a device's fast_reads()
        self.fast_reads: Dict[int, Callable[[], bytes]] = {}

    def register(self, base: int, size: int, device, name: str = "") -> Mapping:
        if size <= 0 or base < 0:
            raise ValueError(f"bad MMIO range {base:#x}+{size:#x}")
        name = name or type(device).__name__
        with self._lock:
            for m in self._maps:
                if base < m.end and m.base < base + size:
                    raise BusOverlap(f"MMIO range {base:#x}-{base + size - 1:#x} of {name} overlaps "
                                     f"{m.name} at {m.base:#x}-{m.end - 1:#x}")
            m = Mapping(base, size, device, name)
            i = bisect_right(self._bases, base)
            # New lists, swapped in as one tuple: a vCPU thread looking up
            # an address meanwhile (without the lock) sees the old or the new.
            self._table = (self._maps[:i] + [m] + self._maps[i:], self._bases[:i] + [base] + self._bases[i:])
            fast = getattr(device, "fast_reads", None)
            for off, fn in (fast() if fast is not None else {}).items():
                if 0 <= off <= size - 4:
                    self.fast_reads[base + off] = fn
        return m

    def unregister(self, mapping: Mapping) -> None:
        """Take ``mapping`` (from :meth:`register`) off the bus: a PCI BAR the guest moved."""
        with self._lock:
            keep = [m for m in self._maps if m is not mapping]
            if len(keep) == len(self._maps):
                return
            for addr in [a for a in self.fast_reads if mapping.base <= a < mapping.end]:
                del self.fast_reads[addr]
            self._table = (keep, [m.base for m in keep])

    @property
    def _maps(self) -> List[Mapping]:
        return self._table[0]

    @property
    def _bases(self) -> List[int]:
        return self._table[1]

    def find(self, addr: int, length: int = 1) -> Optional[Mapping]:
        maps, bases = self._table
        i = bisect_right(bases, addr) - 1
        if i < 0:
            return None
        m = maps[i]
        if addr + length <= m.end:
            return m
        return None

    def read(self, addr: int, length: int) -> bytes:
        m = self.find(addr, length)
        if m is None:
            self.unhandled += 1
            return bytes(length)
        if self.trace is not None:
            key = (m.name, addr - m.base, "r")
            self.trace[key] = self.trace.get(key, 0) + 1
        data = m.device.read(addr - m.base, length)
        return bytes(data[:length]).ljust(length, b"\0")

    def write(self, addr: int, data: bytes) -> None:
        m = self.find(addr, len(data))
        if m is None:
            self.unhandled += 1
            return
        if self.trace is not None:
            key = (m.name, addr - m.base, "w")
            self.trace[key] = self.trace.get(key, 0) + 1
        m.device.write(addr - m.base, data)

    def mappings(self) -> List[Mapping]:
        return list(self._maps)

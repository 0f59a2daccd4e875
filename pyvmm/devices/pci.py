"""One PCI function's configuration space (PCI Local Bus 3.0, 6.1; a type 0
header, 256 bytes): the header, one 64-bit memory BAR (BAR0/BAR1) and a
capability list.

Every byte has a write mask: a write changes only the bits the mask lets
through, so the BAR sizing protocol (write all ones, read back the size's
complement) and read-only fields need no code of their own. After a write
the function looks at what changed: the BAR's address or the command
register's memory-space enable moves the BAR (``on_bar(address or None)``),
and a capability's ``written(cfg)`` hook sees writes into its bytes (MSI-X's
message control). Reads beyond the 256 bytes (the rest of ECAM's 4 KiB: no
extended capabilities) are zero; writes there are ignored.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Callable, List, Optional, Tuple

CONFIG_SIZE = 256
ECAM_FUNCTION_SIZE = 4096

# Header offsets (type 0)
VENDOR_ID, DEVICE_ID, COMMAND, STATUS, REVISION_ID, CLASS_PROG = 0x00, 0x02, 0x04, 0x06, 0x08, 0x09
HEADER_TYPE, BAR0, BAR1, SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x0E, 0x10, 0x14, 0x2C, 0x2E
CAPABILITIES_POINTER, INTERRUPT_LINE, INTERRUPT_PIN = 0x34, 0x3C, 0x3D
CAPS_START = 0x40

# Command register bits a function implements: memory space, bus master, INTx disable
COMMAND_MEMORY, COMMAND_MASTER, COMMAND_INTX_DISABLE = 1 << 1, 1 << 2, 1 << 10
STATUS_CAP_LIST = 1 << 4
BAR_MEM64 = 0b100  # memory BAR, 64-bit, not prefetchable


class Capability:
    """A capability's bytes after its id and next pointer (``body``) and
    the write mask of those bytes. ``written(cfg, at, start, end)`` runs
    after a write to config bytes [start, end) touched the capability
    (``at``: its offset in config space), ``before_read`` before a read of
    them (a field whose value comes from elsewhere puts it in place)."""

    def __init__(self, cap_id: int, body: bytes, wmask: Optional[bytes] = None):
        self.cap_id = cap_id
        self.body = bytes(body)
        self.wmask = bytes(wmask) if wmask is not None else bytes(len(body))
        if len(self.wmask) != len(self.body):
            raise ValueError("a capability's write mask must be as long as its body")

    def written(self, cfg: "PciFunction", at: int, start: int, end: int) -> None:
        pass

    def before_read(self, cfg: "PciFunction", at: int, start: int, end: int) -> None:
        pass

    def size(self) -> int:
        return 2 + len(self.body)


def _put(buf: bytearray, offset: int, value: int, size: int) -> None:
    """``value``'s low ``size`` bytes, little-endian, at ``offset`` of ``buf``."""
    buf[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")


class PciFunction:
    """``bar_size``: BAR0 (64-bit, a power of two of at least 4 KiB);
    ``on_bar(address)``: the BAR's decoded address changed (None: memory
    decoding off). Capabilities are chained from 0x40 in the order given,
    each at a 4-byte aligned offset."""

    def __init__(self, vendor: int, device: int, class_code: int, revision: int, subsystem_vendor: int,
                 subsystem_id: int, bar_size: int, caps: List[Capability],
                 on_bar: Optional[Callable[[Optional[int]], None]] = None):
        if bar_size < 4096 or bar_size & (bar_size - 1):
            raise ValueError(f"BAR size {bar_size:#x} is not a power of two of at least 4 KiB")
        self.bar_size = bar_size
        self.on_bar = on_bar
        self.cfg = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        c, m = self.cfg, self.wmask
        _put(c, VENDOR_ID, vendor, 2)
        _put(c, DEVICE_ID, device, 2)
        _put(c, STATUS, STATUS_CAP_LIST if caps else 0, 2)
        _put(c, REVISION_ID, revision, 1)
        _put(c, CLASS_PROG, class_code, 3)
        _put(c, SUBSYSTEM_VENDOR_ID, subsystem_vendor, 2)
        _put(c, SUBSYSTEM_ID, subsystem_id, 2)
        _put(m, COMMAND, COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE, 2)
        _put(c, BAR0, BAR_MEM64, 4)
        _put(m, BAR0, ~(bar_size - 1) & 0xFFFF_FFF0, 4)
        _put(m, BAR1, 0xFFFF_FFFF, 4)
        _put(m, INTERRUPT_LINE, 0xFF, 1)  # scratch for the OS; no INTx pin
        self.caps: List[Tuple[int, Capability]] = []
        at, prev = CAPS_START, CAPABILITIES_POINTER
        for cap in caps:
            size = 2 + len(cap.body)
            if at + size > CONFIG_SIZE:
                raise ValueError("the capabilities do not fit in 256 bytes of config space")
            c[prev] = at
            c[at] = cap.cap_id
            c[at + 2:at + size] = cap.body
            m[at + 2:at + size] = cap.wmask
            self.caps.append((at, cap))
            prev = at + 1
            at = (at + size + 3) & ~3
        self.mapped: Optional[int] = None

    # -- what the function decodes -------------------------------------------------
    def u(self, offset: int, size: int) -> int:
        return int.from_bytes(self.cfg[offset:offset + size], "little")

    @property
    def bar_address(self) -> int:
        return (self.u(BAR0, 4) & ~0xF) | self.u(BAR1, 4) << 32

    @property
    def memory_enabled(self) -> bool:
        return bool(self.u(COMMAND, 2) & COMMAND_MEMORY)

    def cap_offset(self, cap_id: int) -> Optional[int]:
        for at, cap in self.caps:
            if cap.cap_id == cap_id:
                return at
        return None

    # -- ECAM accesses (offset within the function's 4 KiB) --------------------------
    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length <= 0:
            return bytes(max(length, 0))
        end = offset + length
        for at, cap in self.caps:
            if offset < at + cap.size() and at < end:
                cap.before_read(self, at, offset, end)
        return bytes(self.cfg[offset:end]).ljust(length, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset >= CONFIG_SIZE:
            return
        end = min(offset + len(data), CONFIG_SIZE)
        for i in range(offset, end):
            mask = self.wmask[i]
            self.cfg[i] = (self.cfg[i] & ~mask) | (data[i - offset] & mask)
        for at, cap in self.caps:
            if offset < at + cap.size() and at < end:
                cap.written(self, at, offset, end)
        if offset < BAR1 + 4 and COMMAND < end:
            self._remap()

    # -- snapshot ------------------------------------------------------------------
    def restore_refusal(self, saved: bytes) -> Optional[str]:
        """Why ``saved`` (a snapshot's 256 bytes of this function's config
        space) cannot be this function's: a bit no guest write can change
        differs from the function's own, or another size. None: it fits."""
        if len(saved) != CONFIG_SIZE:
            return f"config space of {len(saved)} bytes, not {CONFIG_SIZE}"
        for i, (b, own, mask) in enumerate(zip(saved, self.cfg, self.wmask)):
            if (b ^ own) & ~mask & 0xFF:
                return f"config space byte {i:#x} is {b:#04x}, its read-only bits are {own & ~mask & 0xFF:#04x} here"
        return None

    def restore(self, saved: bytes) -> None:
        """Take config space ``saved`` (checked by :meth:`restore_refusal`)
        as a guest's writes would leave it, and decode the BAR it names
        (``on_bar``). Capability hooks are not run: their owners restore
        their own state."""
        self.cfg[:] = saved
        self._remap()

    def _remap(self) -> None:
        want = self.bar_address if self.memory_enabled else None
        if want != self.mapped:
            self.mapped = want
            if self.on_bar is not None:
                self.on_bar(want)

"""MSI-X (PCI Local Bus 3.0, 6.8.2): the capability, the vector table and
the pending bit array of one function, both in its BAR.

The table holds, per vector, a message address, message data and a vector
control word whose bit 0 masks the vector (every vector starts masked);
the capability's message control holds MSI-X Enable and Function Mask. A
vector may deliver when MSI-X is enabled and neither mask is set. Whoever
delivers (pyvmm/machine/msi_vectors.py) is told ``changed(vector)`` after
anything that may change a vector's message or whether it may deliver, and
answers ``pending(vector)``: a message the vector owed while masked, which
it delivers once unmasked (its bit in the PBA). Guest accesses outside the
table or PBA, or of other widths than the spec's dword/qword, cannot reach
anything but the table's bytes: the offsets are clipped, reserved bits
are not written.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Callable, Optional, Tuple

from .pci import Capability

CAP_ID = 0x11
ENTRY_SIZE = 16
CONTROL_ENABLE, CONTROL_FUNCTION_MASK = 1 << 15, 1 << 14
VECTOR_MASKED = 1
MAX_VECTORS = 2048
NO_VECTOR = 0xFFFF  # virtio's "no vector" (virtio 1.2, 4.1.5.1.2)

# Writable bits of one entry: address (dword aligned), upper address, data, mask bit.
_ENTRY_WMASK = (0xFFFF_FFFC).to_bytes(4, "little") + b"\xff" * 8 + VECTOR_MASKED.to_bytes(4, "little")


def pba_size(n: int) -> int:
    """The PBA's bytes for ``n`` vectors (whole qwords)."""
    return (n + 63) // 64 * 8


class Msix:
    """``n`` vectors with the table at ``table_offset`` and the PBA at
    ``pba_offset`` of BAR ``bar`` (both 8-byte aligned)."""

    def __init__(self, n: int, table_offset: int, pba_offset: int, changed: Callable[[int], None],
                 pending: Callable[[int], bool], bar: int = 0):
        if not 1 <= n <= MAX_VECTORS:
            raise ValueError(f"{n} MSI-X vectors (1..{MAX_VECTORS})")
        self.n = n
        self.table_offset, self.pba_offset, self.bar = table_offset, pba_offset, bar
        self.changed, self.pending = changed, pending
        self.table = bytearray(ENTRY_SIZE * n)
        self.enabled = self.function_masked = False
        self.reset()

    def reset(self) -> None:
        """Every vector masked with a zero message, MSI-X disabled (a function reset)."""
        self.table[:] = bytes(len(self.table))
        for v in range(self.n):
            self.table[v * ENTRY_SIZE + 12] = VECTOR_MASKED
        self.enabled = self.function_masked = False

    # -- the capability ----------------------------------------------------------------
    def capability(self) -> Capability:
        msix = self

        class _Cap(Capability):
            def written(self, cfg, at: int, start: int, end: int) -> None:
                msix.control_written(cfg.u(at + 2, 2))

        body = ((self.n - 1).to_bytes(2, "little") + (self.table_offset | self.bar).to_bytes(4, "little")
                + (self.pba_offset | self.bar).to_bytes(4, "little"))
        wmask = b"\x00\xc0" + bytes(8)  # Enable and Function Mask
        return _Cap(CAP_ID, body, wmask)

    def control_written(self, control: int) -> None:
        enabled, masked = bool(control & CONTROL_ENABLE), bool(control & CONTROL_FUNCTION_MASK)
        if (enabled, masked) != (self.enabled, self.function_masked):
            self.enabled, self.function_masked = enabled, masked
            for v in range(self.n):
                self.changed(v)

    # -- vectors -----------------------------------------------------------------------
    def entry(self, v: int) -> Tuple[int, int, bool]:
        """(message address, message data, vector masked) of vector ``v``."""
        e = self.table[v * ENTRY_SIZE:(v + 1) * ENTRY_SIZE]
        return (int.from_bytes(e[0:8], "little"), int.from_bytes(e[8:12], "little"),
                bool(e[12] & VECTOR_MASKED))

    def may_deliver(self, v: int) -> bool:
        return 0 <= v < self.n and self.enabled and not self.function_masked and not self.entry(v)[2]

    # -- snapshot ----------------------------------------------------------------------
    def restore_refusal(self, table: bytes) -> Optional[str]:
        """Why ``table`` (a snapshot's vector table) cannot be this one's: another
        size, or a reserved bit set. None: it fits."""
        if len(table) != len(self.table):
            return f"MSI-X table of {len(table)} bytes, not the {len(self.table)} of {self.n} vectors"
        for i, b in enumerate(table):
            if b & ~_ENTRY_WMASK[i % ENTRY_SIZE] & 0xFF:
                return f"MSI-X table byte {i:#x} is {b:#04x}: a reserved bit is set"
        return None

    def restore(self, table: bytes, control: int) -> None:
        """Take a checked vector ``table`` and the capability's message
        ``control`` (MSI-X Enable, Function Mask) without telling anyone: the
        caller then has every vector :attr:`changed`."""
        self.table[:] = table
        self.enabled, self.function_masked = bool(control & CONTROL_ENABLE), bool(control & CONTROL_FUNCTION_MASK)

    # -- BAR accesses (offsets relative to the table / the PBA) ------------------------
    def read_table(self, offset: int, length: int) -> bytes:
        if offset < 0 or length <= 0:
            return bytes(max(length, 0))
        return bytes(self.table[offset:offset + length]).ljust(length, b"\0")

    def write_table(self, offset: int, data: bytes) -> None:
        end = min(offset + len(data), len(self.table))
        if offset < 0 or offset >= end:
            return
        for i in range(offset, end):
            mask = _ENTRY_WMASK[i % ENTRY_SIZE]
            self.table[i] = (self.table[i] & ~mask) | (data[i - offset] & mask)
        for v in range(offset // ENTRY_SIZE, (end - 1) // ENTRY_SIZE + 1):
            self.changed(v)

    def read_pba(self, offset: int, length: int) -> bytes:
        if offset < 0 or length <= 0:
            return bytes(max(length, 0))
        out = bytearray(length)
        for i in range(length):
            byte = offset + i
            for bit in range(8):
                v = byte * 8 + bit
                if v < self.n and self.pending(v):
                    out[i] |= 1 << bit
        return bytes(out)

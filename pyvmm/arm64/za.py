"""ZA's tiles (Arm ARM, "ZA storage"): their names, the ZA rows each one's
horizontal slices are, and a :class:`Tile` view over saved ZA rows."""
from __future__ import annotations

import re
from typing import List, Sequence

from ..errors import UsageProblem

ELEMENT_BYTES = {"B": 1, "H": 2, "S": 4, "D": 8, "Q": 16}
_TILE_NAME = re.compile(r"ZA(\d+)\.([BHSDQ])", re.IGNORECASE)


def tile_names() -> List[str]:
    """ZA0.B; ZA0.H, ZA1.H; ZA0.S-ZA3.S; ZA0.D-ZA7.D; ZA0.Q-ZA15.Q."""
    return [f"ZA{t}.{s}" for s, e in ELEMENT_BYTES.items() for t in range(e)]


def tile_rows(name: str, svl_bytes: int) -> List[int]:
    """ZA array rows holding the horizontal slices of tile ``name``.

    Arm ARM (SME, "ZA storage"): with element size esize bytes there are
    esize tiles ZA0-ZA(esize-1) of that type, each SVL_B/esize slices high;
    horizontal slice i of tile ZAt is ZA array row ``i * esize + t``. So
    ZA0.H is the even rows and ZA1.H the odd ones, ZA3.S rows 3, 7, 11, ...
    """
    m = _TILE_NAME.fullmatch(name.strip())
    if not m:
        raise UsageProblem(f"{name!r} is not a ZA tile", "use e.g. ZA0.B, ZA1.H, ZA3.S, ZA7.D, ZA15.Q")
    t, esize = int(m[1]), ELEMENT_BYTES[m[2].upper()]
    if t >= esize:
        raise UsageProblem(f"{name}: there are only {esize} tiles of {m[2].upper()} elements "
                           f"(ZA0.{m[2].upper()}-ZA{esize - 1}.{m[2].upper()})")
    if svl_bytes < 16 or svl_bytes % 16:
        raise ValueError(f"SVL of {svl_bytes} bytes is not a multiple of 16")
    return [i * esize + t for i in range(svl_bytes // esize)]


class Tile:
    """A view of one ZA tile over the ZA rows (a sequence of SVL_B-byte
    ``bytes``, row 0 first). Elements are little-endian, in the byte order
    ``STR ZA`` stores (ABI page §3)."""

    def __init__(self, name: str, za_rows: Sequence[bytes]):
        svl_b = len(za_rows[0]) if za_rows else 0
        if len(za_rows) != svl_b or any(len(r) != svl_b for r in za_rows):
            raise ValueError("ZA must be SVL_B rows of SVL_B bytes")
        m = _TILE_NAME.fullmatch(name.strip())
        self.rows = tile_rows(name, svl_b)
        self.name = f"ZA{int(m[1])}.{m[2].upper()}"
        self.esize = ELEMENT_BYTES[m[2].upper()]
        self.dim = svl_b // self.esize  # a tile is dim x dim elements
        self._za = za_rows

    def horizontal(self, i: int) -> bytes:
        """Horizontal slice i (ZAtH[i]): one ZA row."""
        return self._za[self.rows[i]]

    def vertical(self, j: int) -> bytes:
        """Vertical slice j (ZAtV[j]): element j of every horizontal slice."""
        e = self.esize
        return b"".join(self._za[r][j * e:(j + 1) * e] for r in self.rows)

    def element(self, i: int, j: int) -> int:
        e = self.esize
        return int.from_bytes(self._za[self.rows[i]][j * e:(j + 1) * e], "little")

    def matrix(self) -> List[List[int]]:
        return [[self.element(i, j) for j in range(self.dim)] for i in range(self.dim)]

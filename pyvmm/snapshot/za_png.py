"""A PNG picture of the ZA arrays saved in a snapshot. Pure.

ZA is SVL/8 rows of SVL/8 bytes (ABI page §3, §5: row *n* is the id ZA[n],
its first SVL/8 bytes carry data), and a vCPU's rows are saved only while
its SVCR.ZA = 1. Each such vCPU becomes one tile: row *n* of ZA is row *n*
of the tile, byte *i* of the row is column *i*, drawn as a square whose
grey level is the byte's value (0 black, 255 white). Tiles are stacked top
to bottom in vCPU order, separated by a red line; a tile narrower than the
widest (a smaller SVL) is padded on the right in dark blue.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import List, Tuple

import png

from ..arm64 import regs
from ..errors import PyvmmError
from . import format as fmt
from ..arm64.vec import SVCR_ZA, vl_bytes
from .manifest import vcpu_states

SEPARATOR = (255, 0, 0)
PADDING = (0, 0, 96)
SEPARATOR_PX = 2
TARGET_PX = 256  # the widest tile is drawn at least this wide


@dataclass
class ZaTile:
    vcpu: int
    svl_bits: int
    rows: List[bytes]  # SVL/8 rows of SVL/8 bytes


def za_tiles(snap: fmt.Snapshot) -> List[ZaTile]:
    """The ZA array of every vCPU whose saved SVCR.ZA = 1, in vCPU order.
    PyvmmError (exit status 1) if there is none; SnapshotError if a vCPU
    with ZA on lacks rows."""
    tiles = []
    for state in sorted(vcpu_states(snap), key=lambda s: s.index):
        if not state.svcr & SVCR_ZA:
            continue
        rows = {}
        for reg_id, value in state.registers:
            d = regs.decode(reg_id)
            if d.kind == "sme_za" and d.slice == 0:
                rows[d.index] = value
        # SVL is the vCPU's largest SME vector length; without the set, the row count says it.
        nbytes = vl_bytes(state.sme_vls) if state.sme_vls else len(rows)
        missing = [n for n in range(nbytes) if n not in rows]
        if nbytes == 0 or missing or len(rows) != nbytes:
            raise fmt.SnapshotError(
                f"vcpu{state.index} has SVCR.ZA = 1 but the snapshot holds {len(rows)} ZA rows, "
                f"not the {nbytes} its SVL of {8 * nbytes} bits needs")
        tiles.append(ZaTile(state.index, 8 * nbytes, [bytes(rows[n][:nbytes]) for n in range(nbytes)]))
    if not tiles:
        raise PyvmmError("no vCPU in the snapshot has ZA enabled (SVCR.ZA = 0 on every vCPU): "
                         "there is no ZA to draw")
    return tiles


def scale_for(tiles: List[ZaTile]) -> int:
    """Pixels per byte, the same for every tile: the widest is >= TARGET_PX wide."""
    widest = max(len(t.rows[0]) for t in tiles)
    return max(1, TARGET_PX // widest)


def encode(tiles: List[ZaTile], scale: int) -> bytes:
    """The PNG (8-bit RGB) of ``tiles`` drawn ``scale`` pixels per byte."""
    width = scale * max(len(t.rows[0]) for t in tiles)
    separator = bytes(SEPARATOR) * width
    lines: List[bytes] = []
    for i, tile in enumerate(tiles):
        if i:
            lines.extend([separator] * SEPARATOR_PX)
        pad = bytes(PADDING) * (width - scale * len(tile.rows[0]))
        for row in tile.rows:
            line = b"".join(bytes((b, b, b)) * scale for b in row) + pad
            lines.extend([line] * scale)
    out = io.BytesIO()
    png.Writer(width, len(lines), greyscale=False, bitdepth=8).write(out, lines)
    return out.getvalue()


def write(path: str, snap: fmt.Snapshot) -> Tuple[List[ZaTile], int]:
    """Write the picture of ``snap``'s ZA arrays to ``path`` atomically;
    returns the tiles drawn and the pixels per byte."""
    tiles = za_tiles(snap)
    scale = scale_for(tiles)
    fmt.write_atomic(path, encode(tiles, scale))
    return tiles, scale

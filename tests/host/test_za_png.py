"""``pyvmm inspect SNAP --za-png FILE``: the ZA arrays saved in a snapshot
drawn as a PNG (read back with pypng and compared byte for byte)."""
import os

import png
import pytest
from click.testing import CliRunner

from pyvmm.arm64.vec import SVCR_ZA
from pyvmm.arm64 import regs
from pyvmm.cli import cli
from pyvmm.errors import PyvmmError
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import memory_image, vcpu_state, za_png

SME_BIT = 10


def pattern(vcpu, row, svl_bytes):
    return bytes((vcpu * 101 + row * 7 + i * 13) & 0xFF for i in range(svl_bytes))


def vcpu(index, svcr, sme_vq=None):
    """A vCPU with SME at SVL 128*sme_vq bits; ZA rows saved when SVCR.ZA = 1
    (full 256-byte buffers, data in the first SVL/8 bytes, as KVM gives them)."""
    registers = [(regs.core("X0"), (index).to_bytes(8, "little"))]
    sme_vls = None
    if sme_vq:
        sme_vls = [q for q in (1, 2, 4, 8, 16) if q <= sme_vq]
        n = 16 * sme_vq
        if svcr & SVCR_ZA:
            registers += [(regs.sme_za_row(r), pattern(index, r, n).ljust(256, b"\0")) for r in range(n)]
    return vcpu_state.VcpuState(index, [2, SME_BIT], sme_vls=sme_vls, svcr=svcr, registers=registers,
                                mp_state=0, events=bytes(64), saved_at_ns=1)


def snapshot(path, states):
    mem = bytearray(16 * 4096)
    blob, stored = memory_image.pack(mem)
    manifest = {"kind": "baremetal", "created_by": "test", "host": {"machine": "x", "kernel": "y"},
                "machine": {"cntfrq": 62500000, "gic": None, "sme_bit": SME_BIT, "features": [2, SME_BIT],
                            "memory": [{"slot": 0, "gpa": 0x80000000, "size": len(mem), "blob": "ram0",
                                        "stored_pages": stored}]},
                "vcpus": [s.to_json() for s in states]}
    blobs = {f"vcpu{s.index}.regs": s.registers_blob() for s in states}
    blobs["ram0"] = blob
    fmt.save(str(path), fmt.Snapshot(manifest, blobs))
    return str(path)


def read_png(path):
    width, height, rows, info = png.Reader(filename=str(path)).read()
    assert info["planes"] == 3 and info["bitdepth"] == 8 and not info["greyscale"]
    return width, height, [bytes(r) for r in rows]


def pixel(rows, x, y):
    return tuple(rows[y][3 * x:3 * x + 3])


def test_za_picture_matches_the_saved_bytes(tmp_path):
    # vcpu0: ZA on, SVL 512 (64x64); vcpu1: ZA off (not drawn); vcpu2: ZA and SM on, SVL 128 (16x16).
    snap = snapshot(tmp_path / "s.snap", [vcpu(0, 2, 4), vcpu(1, 0, 4), vcpu(2, 3, 1)])
    out = tmp_path / "za.png"
    r = CliRunner().invoke(cli, ["inspect", snap, "--za-png", str(out)])
    assert r.exit_code == 0, r.output
    scale = 256 // 64
    assert r.output == (f"wrote {out}: ZA of vcpu0 (64x64 bytes, SVL 512 bits), "
                        f"vcpu2 (16x16 bytes, SVL 128 bits), {scale} px per byte\n")
    assert os.stat(out).st_mode & 0o777 == 0o600  # written by write_atomic
    width, height, rows = read_png(out)
    assert width == 64 * scale and height == (64 + 16) * scale + za_png.SEPARATOR_PX
    for index, n, top in ((0, 64, 0), (2, 16, 64 * scale + za_png.SEPARATOR_PX)):
        for row in range(n):
            expected = pattern(index, row, n)
            for dy in range(scale):
                y = top + row * scale + dy
                line = rows[y]
                for i in range(n):
                    for dx in range(scale):
                        assert pixel(rows, i * scale + dx, y) == (expected[i],) * 3, (index, row, i)
                # a narrower tile is padded to the full width
                assert line[3 * n * scale:] == bytes(za_png.PADDING) * (width - n * scale)
    for y in range(64 * scale, 64 * scale + za_png.SEPARATOR_PX):
        assert rows[y] == bytes(za_png.SEPARATOR) * width


def test_one_pixel_per_byte_at_the_largest_svl(tmp_path):
    snap = snapshot(tmp_path / "s.snap", [vcpu(0, 2, 16)])  # SVL 2048: 256 rows of 256 bytes
    out = tmp_path / "za.png"
    tiles, scale = za_png.write(str(out), fmt.load(snap))
    assert scale == 1 and [t.vcpu for t in tiles] == [0]
    width, height, rows = read_png(out)
    assert (width, height) == (256, 256)
    assert all(rows[r][::3] == pattern(0, r, 256) for r in range(256))


def test_no_vcpu_with_za_is_exit_1_one_line(tmp_path):
    snap = snapshot(tmp_path / "s.snap", [vcpu(0, 0, 4), vcpu(1, 1, 2)])  # SM alone is not ZA
    out = tmp_path / "za.png"
    r = CliRunner().invoke(cli, ["inspect", snap, "--za-png", str(out)])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "no vCPU in the snapshot has ZA enabled" in lines[0]
    assert lines[0].startswith("pyvmm: error:")
    assert not out.exists()
    with pytest.raises(PyvmmError) as info:
        za_png.za_tiles(fmt.load(snap))
    assert info.value.exit_status == 1


def test_missing_rows_are_refused(tmp_path):
    state = vcpu(0, 2, 2)
    state.registers = state.registers[:-1]  # one of the 32 rows lost
    snap = snapshot(tmp_path / "s.snap", [state])
    with pytest.raises(fmt.SnapshotError, match="holds 31 ZA rows, not the 32 its SVL of 256 bits needs"):
        za_png.za_tiles(fmt.load(snap))


def test_za_png_and_json_together_is_a_usage_error(tmp_path):
    snap = snapshot(tmp_path / "s.snap", [vcpu(0, 2, 1)])
    r = CliRunner().invoke(cli, ["inspect", "--json", "--za-png", str(tmp_path / "za.png"), snap])
    assert r.exit_code == 2 and "--za-png" in r.output

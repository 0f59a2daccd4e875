#!/usr/bin/env python3
"""Build the default pyvmm guest initramfs: a gzip'd cpio (newc) archive with
an arm64 busybox-static, pyvmm's /init and, optionally, kernel modules.

Pure Python: runs on any host (no cpio, no root, no arm64 code), so it can
build the archive for the test machine from the outside, or inside it.

Usage: mkinitramfs.py --busybox PATH [--init FILE] [--module KO ...] -o OUT
Kernel modules (.ko, .ko.xz, .ko.zst, .ko.gz) are stored decompressed under
/lib/modules/ and loaded by /init in the order given.
"""
from __future__ import annotations

import argparse
import gzip
import io
import lzma
import os
import stat
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MTIME = 0  # reproducible archives

# The device nodes the kernel needs before devtmpfs is mounted.
NODES = [("dev/console", stat.S_IFCHR | 0o600, 5, 1), ("dev/null", stat.S_IFCHR | 0o666, 1, 3)]
DIRS = ["bin", "sbin", "dev", "proc", "sys", "tmp", "lib", "lib/modules", "root", "etc", "usr", "usr/bin",
        "usr/sbin", "mnt", "run"]


class Cpio:
    """SVR4 "newc" cpio writer (the format the kernel's initramfs unpacker reads:
    Documentation/driver-api/early-userspace/buffer-format.rst)."""

    def __init__(self):
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev=(0, 0), nlink: int = 1) -> None:
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08X}" for v in (
            self.ino, mode, 0, 0, nlink, MTIME, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0))
        self.ino += 1
        self.out.write(hdr.encode() + name_b)
        self.out.write(b"\0" * (-(110 + len(name_b)) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def node(self, name: str, mode: int, major: int, minor: int) -> None:
        self._entry(name, mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self.out.getvalue()
        return data + b"\0" * (-len(data) % 512)


def decompress_module(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        try:
            import zstandard  # type: ignore
        except ImportError:
            sys.exit(f"mkinitramfs: {path}: zstd modules need the 'zstandard' Python package")
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=64 << 20)
    return data


def build(busybox: str, init: str, modules) -> bytes:
    c = Cpio()
    for d in DIRS:
        c.dir(d)
    for name, mode, major, minor in NODES:
        c.node(name, mode, major, minor)
    with open(busybox, "rb") as f:
        c.file("bin/busybox", f.read(), 0o755)
    c.symlink("bin/sh", "busybox")
    with open(init, "rb") as f:
        c.file("init", f.read(), 0o755)
    order = []
    for m in modules:
        base = os.path.basename(m)
        for ext in (".xz", ".gz", ".zst"):
            if base.endswith(ext):
                base = base[:-len(ext)]
        c.file(f"lib/modules/{base}", decompress_module(m))
        order.append(base)
    c.file("lib/modules/order", "".join(f"{o}\n" for o in order).encode())
    raw = c.finish()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=MTIME, compresslevel=6) as g:
        g.write(raw)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--busybox", required=True, help="an arm64 busybox-static binary")
    p.add_argument("--init", default=os.path.join(HERE, "init"), help="the /init script")
    p.add_argument("--module", action="append", default=[], metavar="KO", help="kernel module to include")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args(argv)
    data = build(a.busybox, a.init, a.module)
    tmp = a.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, a.output)
    print(f"mkinitramfs: {a.output} ({len(data)} bytes, {len(a.module)} modules)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

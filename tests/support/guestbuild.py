"""Assemble the bare-metal guests in guests/baremetal/ with a real assembler.

Uses GNU binutils for aarch64: native ``as``/``ld``/``objcopy`` on an arm64
host (the test machine's Debian root has binutils 2.44), or
``aarch64-linux-gnu-*`` when cross-assembling. Output is cached by content
hash under $TMPDIR.
"""
from __future__ import annotations

import glob
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

GUESTS = os.path.join(os.path.dirname(__file__), "..", "..", "guests", "baremetal")
LINUX_USER = os.path.join(os.path.dirname(__file__), "..", "..", "guests", "linux-user")
LOAD_ADDR = 0x80000000
MARCH = "armv9-a+sve2+sme"  # SME2 payloads add ".arch_extension sme2" (binutils >= 2.41)


def _tool(name: str) -> str:
    candidates = [f"aarch64-linux-gnu-{name}"]
    if platform.machine() in ("aarch64", "arm64"):
        candidates.insert(0, name)
    for c in candidates:
        path = shutil.which(c)
        if path:
            return path
    raise RuntimeError(f"no aarch64 '{name}' found (install binutils on arm64, "
                       f"or binutils-aarch64-linux-gnu elsewhere)")


def build(name: str) -> bytes:
    """Assemble guests/baremetal/<name>.s into a raw binary linked at LOAD_ADDR."""
    src = os.path.join(GUESTS, f"{name}.s")
    with open(src, "rb") as f:
        text = f.read()
    for inc in sorted(f for f in os.listdir(GUESTS) if f.endswith(".inc")):  # what .include may pull in
        with open(os.path.join(GUESTS, inc), "rb") as f:
            text += f.read()
    key = hashlib.sha256(text + MARCH.encode()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), "pyvmm-guests")
    os.makedirs(cache, exist_ok=True)
    out = os.path.join(cache, f"{name}-{key}.bin")
    if os.path.exists(out):
        with open(out, "rb") as f:
            return f.read()
    with tempfile.TemporaryDirectory() as d:
        obj, elf, binary = (os.path.join(d, n) for n in ("g.o", "g.elf", "g.bin"))
        subprocess.run([_tool("as"), f"-march={MARCH}", "-I", GUESTS, "-o", obj, src], check=True)
        subprocess.run([_tool("ld"), "-Ttext", hex(LOAD_ADDR), "-e", "_start", "-o", elf, obj], check=True)
        subprocess.run([_tool("objcopy"), "-O", "binary", elf, binary], check=True)
        with open(binary, "rb") as f:
            data = f.read()
    tmp = out + f".{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    return data


def build_linux_program(name: str) -> str:
    """Assemble and link guests/linux-user/<name>.s into a static arm64 Linux
    executable (no libc); returns its path (cached by content hash)."""
    src = os.path.join(LINUX_USER, f"{name}.s")
    text = b""
    for path in [src] + sorted(glob.glob(os.path.join(LINUX_USER, "*.inc"))):  # what it may .include
        with open(path, "rb") as f:
            text += f.read()
    key = hashlib.sha256(text + MARCH.encode()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), "pyvmm-guests")
    os.makedirs(cache, exist_ok=True)
    out = os.path.join(cache, f"{name}-{key}")
    if os.path.exists(out):
        return out
    with tempfile.TemporaryDirectory() as d:
        obj, exe = os.path.join(d, "p.o"), os.path.join(d, "p")
        subprocess.run([_tool("as"), f"-march={MARCH}", "-I", LINUX_USER, "-o", obj, src], check=True)
        subprocess.run([_tool("ld"), "-static", "-e", "_start", "-o", exe, obj], check=True)
        tmp = out + f".{os.getpid()}"
        shutil.copyfile(exe, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    return out


def initrd_with(initrd: str, files: dict, out_path) -> str:
    """The initramfs plus a second cpio segment holding ``files`` (the kernel
    unpacks concatenated archives in order)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "guests", "linux"))
    from mkinitramfs import Cpio

    c = Cpio()
    for name, data in files.items():
        c.file(name, data, 0o755)
    with open(initrd, "rb") as f:
        base = f.read()
    # A following uncompressed segment must start 4-byte aligned; zeros between are skipped.
    out_path.write_bytes(base + bytes(-len(base) % 512) + c.finish())
    return str(out_path)

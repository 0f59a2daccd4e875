"""Helpers (no tests) for the ``pyvmm run`` KVM tests: the default guest's files, running
pyvmm as a subprocess, and tiny bare-metal payloads encoded by hand (so these
tests need no assembler)."""
from __future__ import annotations

import os
import struct
import subprocess
import sys

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# PSCI 0.2 function ids (ARM DEN 0022, SMC32 calling convention)
PSCI_SYSTEM_OFF = 0x84000008
PSCI_SYSTEM_RESET = 0x84000009
UART_DR = 0x0900_0000


def guest_files():
    """(Image, initramfs): $PYVMM_GUEST_KERNEL / $PYVMM_GUEST_INITRD, else what
    guests/linux/build put in out/guest/ (the checkout is shared with the test machine)."""
    kernel = os.environ.get("PYVMM_GUEST_KERNEL") or os.path.join(CHECKOUT, "out", "guest", "Image")
    initrd = os.environ.get("PYVMM_GUEST_INITRD") or os.path.join(CHECKOUT, "out", "guest", "initramfs.cpio.gz")
    for f in (kernel, initrd):
        if not os.path.isfile(f):
            raise AssertionError(f"{f} is missing: run guests/linux/build on the host first "
                                 f"(or set PYVMM_GUEST_KERNEL / PYVMM_GUEST_INITRD)")
    return kernel, initrd


def pyvmm(*args, input=None, timeout=240, **kw):
    env = dict(os.environ)
    env["PYTHONPATH"] = CHECKOUT + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "pyvmm", *map(str, args)], input=input, capture_output=True,
                          timeout=timeout, env=env, cwd=CHECKOUT, **kw)


# ---- A64 encodings (Arm ARM C6) ----------------------------------------------------

def movz(rd, imm16, hw=0):
    return 0xD2800000 | hw << 21 | (imm16 & 0xFFFF) << 5 | rd


def movk(rd, imm16, hw=0):
    return 0xF2800000 | hw << 21 | (imm16 & 0xFFFF) << 5 | rd


def mov64(rd, value):
    out = [movz(rd, value & 0xFFFF)]
    for hw in range(1, 4):
        part = (value >> (16 * hw)) & 0xFFFF
        if part:
            out.append(movk(rd, part, hw))
    return out


HVC0 = 0xD4000002
B_SELF = 0x14000000


def strb(rt, rn):
    return 0x39000000 | rn << 5 | rt


def ldp_x1_x2_x0():
    return 0xA9400801


def program(*words) -> bytes:
    flat = []
    for w in words:
        flat.extend(w if isinstance(w, list) else [w])
    return b"".join(struct.pack("<I", w) for w in flat)


def psci(fn):
    return mov64(0, fn) + [HVC0, B_SELF]


def print_then(text: bytes, fn) -> bytes:
    """Write ``text`` to the PL011, then call PSCI function ``fn`` (None: spin)."""
    words = mov64(1, UART_DR)
    for ch in text:
        words += [movz(2, ch), strb(2, 1)]
    return program(words, psci(fn) if fn is not None else [B_SELF])

"""Helpers (no tests) for the ``pyvmm run`` KVM tests: the default guest's files, running
pyvmm as a subprocess, and tiny bare-metal payloads encoded by hand (so these
tests need no assembler)."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time

# tests/support/ -> the checkout
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


def wait_ready(sock, timeout=300):
    """Until the VMM on ``sock`` has built its VM (the socket is there first): its status."""
    from pyvmm.control import ControlError, call
    from pyvmm.errors import UsageProblem

    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(str(sock), {"cmd": "status"})
        except (UsageProblem, ControlError):
            assert time.monotonic() < deadline, f"no VM ready on {sock} within {timeout} s"
            time.sleep(0.2)


class Running:
    """pyvmm in the background, its stdout collected by a thread."""

    def __init__(self, args, stdin=subprocess.DEVNULL):
        env = dict(os.environ, PYTHONPATH=CHECKOUT)
        self.p = subprocess.Popen([sys.executable, "-m", "pyvmm", *map(str, args)], stdin=stdin,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=CHECKOUT)
        self.out = bytearray()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for chunk in iter(lambda: self.p.stdout.read1(4096), b""):
            self.out += chunk

    def wait_for(self, marker: bytes, count: int = 1, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while self.out.count(marker) < count:
            assert self.p.poll() is None, (self.p.returncode, bytes(self.out[-2000:]), self.p.stderr.read())
            assert time.monotonic() < deadline, f"no {marker!r} x{count} within {timeout} s: {self.out!r}"
            time.sleep(0.05)

    def stop(self, sig):
        t0 = time.monotonic()
        self.p.send_signal(sig)
        self.p.wait(timeout=120)
        self.t.join(5)
        return time.monotonic() - t0, self.p.stderr.read()

    def type(self, text: bytes):
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def wait_exit(self, timeout: float = 120):
        self.p.wait(timeout=timeout)
        self.t.join(5)
        return self.p.stderr.read()

    def finish(self, timeout: float = 400):
        """wait_exit, but a pyvmm still running after ``timeout`` is killed
        and the test fails with what its guest printed last."""
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(30)
            raise AssertionError(f"pyvmm did not exit within {timeout} s; console tail: "
                                 f"{bytes(self.out[-3000:]).decode(errors='replace')!r}") from None


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

#!/usr/bin/env python3
"""What one virtio-mmio register access costs the guest in pyvmm, and how
much of it is Python on the vCPU thread.

Guest side: guests/baremetal/mmio_loop.s run with ``pyvmm run --firmware``
(serial console; virtio-rng in slot 0) does COUNT accesses to the device's
registers and times them with the virtual counter: InterruptStatus reads,
InterruptACK writes of 0 (an MMIO exit to Python) and of 1 (the used-buffer
bit, which edge-triggered devices take in KVM without an exit), and the
pair Linux's interrupt handler makes (read, then ACK of what it read: 1).
InterruptStatus is read twice: as pyvmm runs (with the register page,
pyvmm/devices/virtio_regpage.py, where the host allows it: a plain memory
load, no exit) and with ``PYVMM_VIRTIO_REGPAGE=0`` (an exit to Python), so
both are in the same run; the first row says whether the page was on.
Python side: :func:`pyvmm.machine.vcpu_loop.handle_exit` timed on a
synthetic ``struct kvm_run`` for the same accesses (exit decode, bus lookup,
register handler, the transport's lock), in this process. The difference is
the KVM round trip (guest exit, return to user space, KVM_RUN again).

Prints microseconds per access (medians of RUNS guest runs; the Python part
over many calls) as a Markdown table. No QEMU row: QEMU's virtio-pci guest
takes its interrupts through MSI-X and makes none of these accesses.
Run: python3 bench/mmio_exits.py  (re-runs itself in ci/qemu-aarch64/run on
a non-arm64 host).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from _common import CHECKOUT, env, guest_in_test_machine

RUNS = int(os.environ.get("PYVMM_BENCH_RUNS", "3"))
COUNT = int(os.environ.get("PYVMM_BENCH_EXITS", "2000"))
CALLS = 20000
VIRTIO = 0x0A00_0000
STATUS, ACK = 0x60, 0x64
# (label, mode bits: 1 read InterruptStatus, 2 write InterruptACK; value written;
#  register page allowed)
ACCESSES = (("InterruptStatus read", 1, 0, True),
            ("InterruptStatus read, PYVMM_VIRTIO_REGPAGE=0 (exit)", 1, 0, False),
            ("InterruptACK write of 0 (exit)", 2, 0, True),
            ("InterruptACK write of 1 (used-buffer bit)", 2, 1, True),
            ("interrupt handler pair: read + ACK of 1", 3, 1, True))


def _run(path: str, regpage: bool, *extra: str) -> subprocess.CompletedProcess:
    e = env()
    if not regpage:
        e["PYVMM_VIRTIO_REGPAGE"] = "0"
    return subprocess.run([sys.executable, "-m", "pyvmm", "run", "--firmware", path, "-m", "64M", "-c", "1", *extra],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e,
                          cwd=CHECKOUT, timeout=600)


def _patched(fw_base: bytes, count: int, mode: int, ack: int, tmp: str) -> str:
    fw = bytearray(fw_base)
    fw[8:32] = count.to_bytes(8, "little") + mode.to_bytes(8, "little") + ack.to_bytes(8, "little")
    path = os.path.join(tmp, "fw.bin")
    with open(path, "wb") as f:
        f.write(fw)
    return path


def regpage_state(fw_base: bytes, tmp: str) -> str:
    """"on", or "off: why" (what ``pyvmm run --debug`` says about the register page)."""
    out = _run(_patched(fw_base, 1, 1, 0, tmp), True, "--debug")
    for line in out.stderr.decode(errors="replace").splitlines():
        if "virtio register page (reads without exits): " in line:
            return line.split("virtio register page (reads without exits): ", 1)[1].strip()
    raise SystemExit(f"bench: pyvmm run --debug did not say whether the register page is on: {out.stderr[-500:]!r}")


def guest_us(fw_base: bytes, mode: int, ack: int, tmp: str, regpage: bool = True) -> float:
    """Microseconds per loop iteration, measured by the guest."""
    out = _run(_patched(fw_base, COUNT, mode, ack, tmp), regpage)
    lines = [ln for ln in out.stdout.decode(errors="replace").split() if len(ln) == 16]
    if out.returncode != 0 or len(lines) < 2:
        raise SystemExit(f"bench: the probe guest failed ({out.returncode}): {out.stderr[-500:]!r} {out.stdout[-200:]!r}")
    ticks, freq = int(lines[0], 16), int(lines[1], 16)
    return ticks / freq / COUNT * 1e6


def python_us(mode: int, ack: int) -> float:
    """Microseconds per loop iteration in handle_exit: the accesses of ``mode``
    that exit to Python (an ACK of 1 does not, see :func:`exits_to_python`)."""
    from collections import Counter

    from pyvmm._ffi import const, ffi
    from pyvmm.devices.bus import MmioBus
    from pyvmm.devices.virtio_mmio import SIZE, VirtioMmio
    from pyvmm.devices.virtio_rng import VirtioRng
    from pyvmm.machine.vcpu_loop import handle_exit

    bus = MmioBus()
    bus.register(VIRTIO, SIZE, VirtioMmio(VIRTIO, 16, None, lambda level: None, VirtioRng()), "virtio-rng")
    runs = []
    for is_write, off in ((False, STATUS), (True, ACK)):
        if not mode & (2 if is_write else 1) or (is_write and not exits_to_python(ack)):
            continue
        run = ffi.new("struct kvm_run *")
        run.exit_reason = const("KVM_EXIT_MMIO")
        run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = VIRTIO + off, 4, is_write
        run.mmio.data[0] = ack if is_write else 0
        runs.append(run)
    counts: Counter = Counter()
    t0 = time.perf_counter()
    for _ in range(CALLS):
        for run in runs:
            handle_exit(run, bus, 0, counts)
    return (time.perf_counter() - t0) / CALLS * 1e6


def exits_to_python(ack: int) -> bool:
    """Whether an InterruptACK write of ``ack`` leaves KVM (an edge-triggered
    transport has KVM take the used-buffer bit, 1: pyvmm.machine.virtio_notify)."""
    return ack != 1


def main():
    guest_in_test_machine("bench/mmio_exits.py")
    sys.path.insert(0, os.path.join(CHECKOUT, "tests"))
    from support import guestbuild

    fw = guestbuild.build("mmio_loop")
    with tempfile.TemporaryDirectory() as tmp:
        page = regpage_state(fw, tmp)
        guest = {}
        for n in range(RUNS):
            for label, mode, ack, regpage in ACCESSES:
                v = guest_us(fw, mode, ack, tmp, regpage)
                guest.setdefault(label, []).append(v)
                print(f"bench: run {n + 1}/{RUNS} {label}: {v:.1f} us", file=sys.stderr, flush=True)
    print(f"\n## virtio-mmio register accesses in pyvmm ({COUNT} per guest run, medians of {RUNS} runs; "
          f"Python part: handle_exit on a synthetic exit, {CALLS} calls; register page {page})\n")
    print("| access | guest sees (us) | Python on the vCPU thread (us) | the rest: KVM round trip (us) |")
    print("|---|---|---|---|")
    for label, mode, ack, regpage in ACCESSES:
        g = statistics.median(guest[label])
        read_exits = mode & 1 and not (regpage and page == "on")
        exits = read_exits or (mode & 2 and exits_to_python(ack))
        p = python_us(mode if read_exits else mode & ~1, ack) if exits else 0.0
        print(f"| {label} | {g:.1f} | {p:.1f} | {g - p:.1f} |")


if __name__ == "__main__":
    main()

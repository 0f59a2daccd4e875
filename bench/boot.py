#!/usr/bin/env python3
"""Boot benchmark: pyvmm vs QEMU (-accel kvm), same kernel and initramfs.

Inside one test-machine run (or natively on an arm64 KVM host) it boots the
default guest (guests/linux: Debian's kernel, busybox initramfs) with
``quiet pyvmm.quick=1`` (init powers off at once), RUNS times with each VMM,
and prints the median time from process start to the guest's init marker and
to process exit, the ratio pyvmm/QEMU, pyvmm's RSS without guest RAM, and
console throughput (bytes/s) over the UART and over virtio-console.

Run: python3 bench/boot.py  (on a non-arm64 host it re-runs itself inside
ci/qemu-aarch64/run; build the guest first with guests/linux/build).
"""
from __future__ import annotations

import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from _common import env, guest_in_test_machine

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
RUNS = int(os.environ.get("PYVMM_BENCH_RUNS", "5"))
# which console throughputs to measure (PYVMM_BENCH_CONSOLES=virtio: only virtio-console)
CONSOLES = os.environ.get("PYVMM_BENCH_CONSOLES", "serial,virtio").split(",")
MEM = "256M"
MEM_BYTES = 256 << 20
INIT_MARKER = b"pyvmm-guest: init"
# bytes the guest writes to its console: the UART is slow for everyone (an exit per byte or so);
# bench/data_planes.py times virtio-console with its own, longer size (PYVMM_BENCH_CONSOLE_MB)
THROUGHPUT_BYTES = {"serial": int(os.environ.get("PYVMM_BENCH_UART_BYTES", "8192")),
                    "virtio": int(os.environ.get("PYVMM_BENCH_VIRTIO_BYTES", "262144"))}





class Watched:
    """A VMM process; records when markers appear on its stdout and samples RSS."""

    def __init__(self, cmd, env=None):
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=env, cwd=CHECKOUT)
        self.out = bytearray()
        self.seen = {}
        self.rss_other = None
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for chunk in iter(lambda: self.p.stdout.read1(65536), b""):
            now = time.monotonic() - self.t0
            start = max(len(self.out) - 32, 0)  # look only at what is new (markers may straddle chunks)
            self.out += chunk
            window = bytes(self.out[start:])
            for m in (INIT_MARKER, b"T0\n", b"T0\r\n", b"T1"):
                if m not in self.seen and m in window:
                    self.seen[m] = now
                    if m == INIT_MARKER:
                        self.rss_other = rss_without_guest_ram(self.p.pid)

    def wait(self, timeout=600):
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise SystemExit(f"bench: {' '.join(self.p.args[:3])} timed out; output: {bytes(self.out[-500:])!r}")
        self.exit_time = time.monotonic() - self.t0
        self.t.join(5)
        self.err = self.p.stderr.read()
        if self.p.returncode != 0:
            raise SystemExit(f"bench: {self.p.args[:3]} exited {self.p.returncode}: {self.err[-800:]!r}")
        return self


def rss_without_guest_ram(pid):
    """Resident KiB of every mapping except the guest RAM one: the anonymous
    mapping of the guest's size. The kernel may merge it with an adjacent
    anonymous mapping (seen: 256 MiB + 132 KiB for pyvmm), so any anonymous
    mapping of at least the guest's size and at most 64 MiB more counts as
    guest RAM; what is merged into it is not counted (at most a few hundred KiB)."""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    total, size, skip = 0, 0, False
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            size = hi - lo
            anonymous = len(parts) == 5 or parts[5].startswith("[anon")
            skip = anonymous and MEM_BYTES <= size <= MEM_BYTES + (64 << 20)
        elif parts[0] == "Rss:" and not skip:
            total += int(parts[1])
    return total


def pyvmm_cmd(k, i, params, console="serial"):
    return [sys.executable, "-m", "pyvmm", "run", "-k", k, "-i", i, "-m", MEM, "-c", "1", "--console", console,
            "-p", params]


def qemu_cmd(k, i, params, console="serial"):
    q = shutil.which("qemu-system-aarch64")
    if not q:
        sys.exit("bench: qemu-system-aarch64 not found (the test machine's guest root has qemu-system-arm)")
    cmd = [q, "-accel", "kvm", "-M", "virt,gic-version=3", "-cpu", "host", "-m", MEM, "-smp", "1",
           "-nographic", "-no-reboot", "-nic", "none", "-monitor", "none", "-kernel", k, "-initrd", i]
    if console == "virtio":
        cmd += ["-serial", "none", "-device", "virtio-serial-device", "-chardev", "stdio,id=con",
                "-device", "virtconsole,chardev=con", "-append", f"console=hvc0 {params}"]
    else:
        cmd += ["-serial", "stdio", "-append", f"console=ttyAMA0 {params}"]
    return cmd




def throughput_script(n):
    s = (f"echo T0; dd if=/dev/zero bs=4096 count={n // 4096} 2>/dev/null | tr '\\000' x; echo; echo T1\n")
    return "pyvmm.cmd=" + base64.b64encode(s.encode()).decode()


def local_guest(k, i, tmp):
    """Copies of the kernel and initramfs in ``tmp`` (the test machine's
    /tmp, a tmpfs), which both VMMs boot from. The checkout is a virtio-fs
    mount there whose page cache is dropped at each open (virtiofsd
    --cache=auto), so booting from it reads the 51 MB Image from the outer
    host on every start (seen: 10-20 s of a boot under load), a cost of the
    test rig that a host with its kernel on a local disk does not have."""
    out = []
    for path in (k, i):
        dest = os.path.join(tmp, os.path.basename(path))
        shutil.copyfile(path, dest)
        out.append(dest)
    return out[0], out[1]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def main():
    k, i = guest_in_test_machine("bench/boot.py")
    tmp = tempfile.mkdtemp(prefix="pyvmm-bench-")
    try:
        run_all(*local_guest(k, i, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_all(k, i):
    boot = {"pyvmm": [], "qemu": []}
    for n in range(RUNS):
        for name, mk in (("pyvmm", pyvmm_cmd), ("qemu", qemu_cmd)):
            w = Watched(mk(k, i, "quiet pyvmm.quick=1"), env()).wait()
            boot[name].append((w.seen.get(INIT_MARKER), w.exit_time, w.rss_other))
            print(f"bench: run {n + 1}/{RUNS} {name}: init {w.seen.get(INIT_MARKER, float('nan')):.2f} s, "
                  f"exit {w.exit_time:.2f} s", file=sys.stderr, flush=True)
    tput = {}
    for name, mk in (("pyvmm", pyvmm_cmd), ("qemu", qemu_cmd)):
        for console in CONSOLES:
            n = THROUGHPUT_BYTES[console]
            w = Watched(mk(k, i, "quiet " + throughput_script(n), console), env()).wait()
            t0 = w.seen.get(b"T0\n") or w.seen.get(b"T0\r\n")
            t1 = w.seen.get(b"T1")
            got = bytes(w.out).count(b"x")
            tput[name, console] = got / (t1 - t0) if t0 and t1 and t1 > t0 and got >= n else None
            print(f"bench: {name} {console} console: {got} bytes in "
                  f"{(t1 - t0) if t0 and t1 else float('nan'):.2f} s", file=sys.stderr, flush=True)

    def row(name, key):
        return median([r[key] for r in boot[name]])

    p_init, q_init = row("pyvmm", 0), row("qemu", 0)
    p_exit, q_exit = row("pyvmm", 1), row("qemu", 1)
    p_rss, q_rss = row("pyvmm", 2), row("qemu", 2)

    def f(x, unit=""):
        return "n/a" if x is None or x != x else f"{x:.2f}{unit}"

    def bps(x):
        return "n/a" if x is None else f"{x:,.0f}"

    print(f"\n## pyvmm run vs QEMU -accel kvm ({RUNS} runs each, medians; {MEM} guest, 1 vCPU, "
          f"Debian kernel, quiet, init powers off at once)\n")
    print("| metric | pyvmm | QEMU | pyvmm/QEMU | target |")
    print("|---|---|---|---|---|")
    print(f"| time to guest init | {f(p_init, ' s')} | {f(q_init, ' s')} | {f(p_init / q_init)} | <= 0.8 |")
    print(f"| time to exit | {f(p_exit, ' s')} | {f(q_exit, ' s')} | {f(p_exit / q_exit)} | |")
    print(f"| RSS without guest RAM | {f(p_rss / 1024, ' MiB')} | {f(q_rss / 1024, ' MiB')} | "
          f"{f(p_rss / q_rss)} | pyvmm <= 40 MiB |")
    for console in CONSOLES:
        a, b = tput["pyvmm", console], tput["qemu", console]
        ratio = f(a / b) if a and b else "n/a"
        label = "UART (PL011)" if console == "serial" else "virtio-console"
        print(f"| console throughput, {label} | {bps(a)} B/s | {bps(b)} B/s | {ratio} | >= 1 |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Start-up benchmark: ``pyvmm run`` from process start to the first KVM_RUN,
against the bare interpreter's start-up (``python3 -c ...``), in the same
test-machine run.

Both are timed from just before this script spawns the process (its
CLOCK_MONOTONIC): the bare interpreter to the moment its ``-c`` code runs
(it prints ``time.monotonic_ns()``), pyvmm to the moment its first vCPU
enters KVM_RUN (``pyvmm run --debug`` prints that CLOCK_MONOTONIC time in
its closing line; the guest is stopped with SIGTERM as soon as it writes to
its console). Also timed: ``import pyvmm.cli`` and ``pyvmm --help`` to exit.
Every process runs once untimed first (bytecode compiled, files in the page
cache), then RUNS times; the medians are printed as a Markdown table.

Run: python3 bench/startup.py  (on a non-arm64 host it re-runs itself inside
ci/qemu-aarch64/run; build the guest first with guests/linux/build).
"""
from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time

from _common import CHECKOUT, env, guest_in_test_machine

RUNS = int(os.environ.get("PYVMM_BENCH_RUNS", "7"))
MEM = "256M"
_FIRST_RUN = re.compile(rb"first KVM_RUN at CLOCK_MONOTONIC ([0-9.]+) s")


def bare_python() -> float:
    """Seconds from spawn to the interpreter running user code."""
    t0 = time.monotonic_ns()
    out = subprocess.run([sys.executable, "-c", "import time; print(time.monotonic_ns())"],
                         stdout=subprocess.PIPE, check=True, env=env()).stdout
    return (int(out) - t0) / 1e9


def wall(cmd) -> float:
    """Seconds from spawn to exit."""
    t0 = time.monotonic()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, env=env(), cwd=CHECKOUT)
    return time.monotonic() - t0


def pyvmm_first_run(k: str, i: str) -> float:
    """Seconds from spawn to pyvmm's first KVM_RUN."""
    cmd = [sys.executable, "-m", "pyvmm", "run", "--debug", "-k", k, "-i", i, "-m", MEM, "-c", "1"]
    t0 = time.monotonic_ns()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env(), cwd=CHECKOUT)
    try:
        assert p.stdout is not None
        first = p.stdout.read1(4096)  # the guest's first console output: it runs
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    except BaseException:
        p.kill()
        p.wait()
        raise
    m = _FIRST_RUN.search(err)
    if not first or not m:
        raise SystemExit(f"bench: pyvmm run gave no first-KVM_RUN time (status {p.returncode}): {err[-600:]!r}")
    return float(m.group(1)) - t0 / 1e9


def main():
    k, i = guest_in_test_machine("bench/startup.py")
    probes = {
        "python3 -c (bare interpreter to user code)": bare_python,
        "pyvmm run to first KVM_RUN": lambda: pyvmm_first_run(k, i),
        "python3 -c 'import pyvmm.cli' to exit": lambda: wall([sys.executable, "-c", "import pyvmm.cli"]),
        "python3 -c pass to exit": lambda: wall([sys.executable, "-c", "pass"]),
        "pyvmm --help to exit": lambda: wall([sys.executable, "-m", "pyvmm", "--help"]),
    }
    times = {name: [] for name in probes}
    for n in range(RUNS + 1):
        for name, probe in probes.items():
            t = probe()
            if n:  # the first round only warms up
                times[name].append(t)
        if n:
            print(f"bench: run {n}/{RUNS}: " + ", ".join(f"{times[x][-1]:.3f}" for x in probes),
                  file=sys.stderr, flush=True)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["python3 -c (bare interpreter to user code)"]
    print(f"\n## pyvmm start-up ({RUNS} runs each after one warm-up, medians; {MEM} guest, 1 vCPU, "
          "Debian kernel and the project's initramfs)\n")
    print("| from process start to | seconds | / bare interpreter | target |")
    print("|---|---|---|---|")
    for name, t in med.items():
        target = "<= 2" if name.startswith("pyvmm run") else ""
        print(f"| {name} | {t:.3f} | {t / base:.2f} | {target} |")


if __name__ == "__main__":
    main()

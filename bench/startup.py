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

The checkout rows run ``python3 -m pyvmm`` from the checkout, a virtio-fs
mount in the test machine, where each file lookup costs milliseconds. The
rows marked "installed" time pyvmm as users run it: the ``pyvmm`` command in
a venv on the test machine's /tmp (``--without-pip --system-site-packages``,
for cffi) holding a compiled copy of ``pyvmm/`` and ``bin/pyvmm`` installed as
pip installs it (its ``#!python`` line pointed at the venv's interpreter; pip
itself is not in the test machine), run from /tmp with no PYTHONPATH, against
that venv's bare interpreter. The last row is the same command with the
guest's kernel and initrd copied to /tmp too, as a user's files on a local
disk: on the checkout's virtio-fs mount the kernel's open and first read
cost 20-125 ms in the test machine (0.8 ms on /tmp), a cost of the test
machine's file sharing that the bare interpreter does not pay. The installed
command reads its modules from its start-up bundle (pyvmm/_pycbundle.py, written
by the warm-up run); the row without it (PYVMM_NO_BUNDLE=1, files on /tmp: with
them on virtio-fs, opening them takes longer than the imports beside it) shows
what it saves.

Run: python3 bench/startup.py  (on a non-arm64 host it re-runs itself inside
ci/qemu-aarch64/run; build the guest first with guests/linux/build).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from _common import CHECKOUT, env, guest_in_test_machine

RUNS = int(os.environ.get("PYVMM_BENCH_RUNS", "7"))
MEM = "256M"
_FIRST_RUN = re.compile(rb"first KVM_RUN at CLOCK_MONOTONIC ([0-9.]+) s")


def bare_python(python: str = sys.executable, environ=None) -> float:
    """Seconds from spawn to the interpreter running user code."""
    t0 = time.monotonic_ns()
    out = subprocess.run([python, "-c", "import time; print(time.monotonic_ns())"],
                         stdout=subprocess.PIPE, check=True, env=environ or env()).stdout
    return (int(out) - t0) / 1e9


def wall(cmd) -> float:
    """Seconds from spawn to exit."""
    t0 = time.monotonic()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, env=env(), cwd=CHECKOUT)
    return time.monotonic() - t0


def pyvmm_first_run(k: str, i: str, pyvmm=(sys.executable, "-m", "pyvmm"), environ=None, cwd: str = CHECKOUT) -> float:
    """Seconds from spawn to pyvmm's first KVM_RUN (``pyvmm``: the command that is pyvmm)."""
    cmd = [*pyvmm, "run", "--debug", "-k", k, "-i", i, "-m", MEM, "-c", "1"]
    t0 = time.monotonic_ns()
    return first_run_at(cmd, environ or env(), cwd) - t0 / 1e9


def first_run_at(cmd, environ, cwd: str, stderr=None) -> float:
    """CLOCK_MONOTONIC seconds at which ``cmd`` (a ``pyvmm run --debug``) first entered KVM_RUN,
    from its closing line once the guest wrote to its console and it was stopped with SIGTERM;
    its stderr is appended to the list ``stderr`` if one is given."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=environ, cwd=cwd)
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
    if stderr is not None:
        stderr.append(err)
    return float(m.group(1))


def installed(root: str, tree: str = CHECKOUT):
    """(python, the pyvmm command) of a venv made in ``root`` with a compiled copy of the
    pyvmm/ of ``tree`` (a checkout) in it and its bin/pyvmm installed as pip installs a script:
    its ``#!python`` line made the venv's interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", root], check=True)
    python = os.path.join(root, "bin", "python3")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             stdout=subprocess.PIPE, text=True, check=True, env=installed_env()).stdout.strip()
    shutil.copytree(os.path.join(tree, "pyvmm"), os.path.join(purelib, "pyvmm"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([python, "-m", "compileall", "-q", os.path.join(purelib, "pyvmm")], check=True, env=installed_env())
    with open(os.path.join(tree, "bin", "pyvmm")) as f:
        first, rest = f.read().split("\n", 1)
    if first != "#!python":
        raise SystemExit(f"bench: bin/pyvmm starts with {first!r}, not #!python (what pip rewrites)")
    command = os.path.join(root, "bin", "pyvmm")
    with open(command, "w") as f:
        f.write(f"#!{python}\n{rest}")
    os.chmod(command, 0o755)
    return python, command


def installed_env():
    """The environment without the checkout on the path (the venv's own pyvmm is the one imported)."""
    e = env()
    e.pop("PYTHONPATH", None)
    return e


def main():
    k, i = guest_in_test_machine("bench/startup.py")
    root = tempfile.mkdtemp(prefix="pyvmm-startup-")
    try:
        measure(k, i, installed(os.path.join(root, "venv")), root, copied_to(root, k, i))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def copied_to(root: str, *paths: str):
    """The paths of copies of ``paths`` made in ``root`` (a local disk, not the checkout's virtio-fs)."""
    local = []
    for path in paths:
        local.append(os.path.join(root, os.path.basename(path)))
        shutil.copyfile(path, local[-1])
    return tuple(local)


def measure(k: str, i: str, venv, venv_cwd: str, local):
    venv_python, venv_pyvmm = venv
    probes = {
        "python3 -c (bare interpreter to user code)": bare_python,
        "python3 -m pyvmm run (checkout) to first KVM_RUN": lambda: pyvmm_first_run(k, i),
        "python3 -c 'import pyvmm.cli' to exit": lambda: wall([sys.executable, "-c", "import pyvmm.cli"]),
        "python3 -c pass to exit": lambda: wall([sys.executable, "-c", "pass"]),
        "python3 -m pyvmm --help (checkout) to exit": lambda: wall([sys.executable, "-m", "pyvmm", "--help"]),
        "installed: venv python3 -c (bare interpreter to user code)": lambda: bare_python(venv_python, installed_env()),
        "installed: pyvmm run (the venv's bin/pyvmm) to first KVM_RUN": lambda: pyvmm_first_run(
            k, i, (venv_pyvmm,), installed_env(), venv_cwd),
        "installed: the same with the kernel and initrd on /tmp": lambda: pyvmm_first_run(
            *local, (venv_pyvmm,), installed_env(), venv_cwd),
        "installed: the same on /tmp without the start-up bundle (PYVMM_NO_BUNDLE=1)": lambda: pyvmm_first_run(
            *local, (venv_pyvmm,), dict(installed_env(), PYVMM_NO_BUNDLE="1"), venv_cwd),
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
    print(f"\n## pyvmm start-up ({RUNS} runs each after one warm-up, medians; {MEM} guest, 1 vCPU, "
          "Debian kernel and the project's initramfs)\n")
    print("| from process start to | seconds | / bare interpreter | target |")
    print("|---|---|---|---|")
    for name, t in med.items():
        venv = name.startswith("installed: ")
        base = med[("installed: venv " if venv else "") + "python3 -c (bare interpreter to user code)"]
        target = "<= 2" if ("pyvmm run" in name or "the same" in name) and "bundle" not in name else ""
        print(f"| {name} | {t:.3f} | {t / base:.2f} | {target} |")
    print("\n(installed: the pyvmm command of a venv on the test machine's /tmp with a compiled copy of pyvmm/ "
          "and bin/pyvmm, against that venv's bare interpreter, the guest's kernel and initrd read from the checkout (a virtio-fs mount) "
          "except in the last row; the other rows run the checkout)")


if __name__ == "__main__":
    main()

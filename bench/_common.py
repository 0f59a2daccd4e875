"""What the benchmarks share: where the checkout is, the guest's files, the
environment pyvmm runs in. (Imported by bench/*.py, which put this
directory on sys.path by being run as scripts.)"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if CHECKOUT not in sys.path:  # the benchmarks use pyvmm's helpers (pyvmm.unix_socket)
    sys.path.insert(1, CHECKOUT)


def guest_files(prog: str = "bench"):
    """(Image, initramfs): $PYVMM_GUEST_KERNEL / $PYVMM_GUEST_INITRD, else guests/linux/build's output."""
    k = os.environ.get("PYVMM_GUEST_KERNEL") or os.path.join(CHECKOUT, "out", "guest", "Image")
    i = os.environ.get("PYVMM_GUEST_INITRD") or os.path.join(CHECKOUT, "out", "guest", "initramfs.cpio.gz")
    for f in (k, i):
        if not os.path.isfile(f):
            sys.exit(f"{prog}: error: {f} missing: run guests/linux/build first")
    return k, i


def env():
    """This environment with the checkout's pyvmm importable (``python3 -m pyvmm``)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = CHECKOUT
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    return e


def guest_in_test_machine(script: str, argv=(), prog: str = "bench"):
    """(Image, initramfs) on an arm64 host with /dev/kvm, once the checkout's
    bytecode is compiled (as an installed pyvmm would have it, so no timed
    start compiles; the test machine keeps .pyc files under
    PYTHONPYCACHEPREFIX=/tmp/pycache, and a PYTHONDONTWRITEBYTECODE from the
    caller is dropped by env()). Anywhere else ``script`` (bench/NAME.py) runs again, with
    ``argv``, inside ci/qemu-aarch64/run, and this does not return."""
    if platform.machine() not in ("aarch64", "arm64") or not os.path.exists("/dev/kvm"):
        run = os.path.join(CHECKOUT, "ci", "qemu-aarch64", "run")
        guest_files(prog)
        os.execv(run, [run, "--", "python3", script, *argv])
    k, i = guest_files(prog)
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(CHECKOUT, "pyvmm")], check=False)
    return k, i

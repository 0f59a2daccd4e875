#!/usr/bin/env python3
"""Where ``pyvmm run``'s start-up goes, in the test machine: the phases from
process start to the first KVM_RUN, the imports, and the ioctls issued before
that first KVM_RUN. A companion of bench/startup.py (its figure is the one the
target is judged by); this one explains it.

Each tree named on the command line (default: this checkout) is installed as
bench/startup.py installs it (a venv on /tmp with a compiled copy of pyvmm/ and
bin/pyvmm); the guest's kernel and initrd are copied to /tmp. Then, in rounds
(ROUNDS, default 5, after one warm-up; the trees interleaved, so a loaded host
moves both alike):

- the bare interpreter's start-up (``python3 -c``, spawn to user code);
- ``pyvmm run`` as installed, spawn to its first KVM_RUN (``--debug``'s line);
- the same command run by a driver (``-X importtime`` with PROFILE_IMPORTS=1)
  that wraps pyvmm's build steps and counts ioctls (it imports the run path's
  modules first, then wraps, then calls the command's ``main``): ms from spawn
  at the end of each phase, and the ioctls by request before the first KVM_RUN.

Medians are printed per tree. Run: python3 bench/startup_profile.py [TREE ...]
(on a non-arm64 host it re-runs itself inside ci/qemu-aarch64/run; only trees
under the checkout are visible there).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

from _common import CHECKOUT, guest_files
from startup import bare_python, copied_to, first_run_at, installed, installed_env

ROUNDS = int(os.environ.get("ROUNDS", "5"))
MEM = "256M"

# Run by the venv's interpreter: argv = [driver, T0_NS, pyvmm args...]; prints one JSON line on stderr at exit.
DRIVER = r'''
import time
t_script = time.monotonic_ns()
import os, sys
T0 = int(sys.argv.pop(1))
marks = []
def mark(name, t=None):
    marks.append((name, ((t if t is not None else time.monotonic_ns()) - T0) / 1e6))
mark("script start", t_script)
from pyvmm.commands import entry
from pyvmm.commands.entry import main
if hasattr(entry, "_open_ahead"):  # as main does before loading the command; not again in main
    entry._open_ahead(sys.argv[2:])
    entry._open_ahead = lambda args: None
from pyvmm.commands import options, run as run_cmd
import pyvmm.api, pyvmm.machine.session as session_mod, pyvmm.machine.machine as machine_mod
import pyvmm.kvm, pyvmm.vm, pyvmm.vcpu, pyvmm.sme, pyvmm.guest_features, pyvmm.memory
import pyvmm.machine.vcpu_loop, pyvmm.machine.gic, pyvmm.boot.fdt, pyvmm.devices.io_thread
import pyvmm.machine.kick, pyvmm.machine.console, pyvmm.devices.virtio_regpage, pyvmm.machine.virtio_notify
mark("imports end")
from pyvmm import _fd, ioctls
counts, first = {}, []
names = {}
for spec in ioctls._TABLE:
    try:
        names[ioctls.request(spec[0]).number] = spec[0]
    except Exception:
        pass
real = _fd._ioctl
def counted():
    call, arg_of_int = real()
    def counting(fd, number, arg):
        n = names.get(int(number), hex(int(number)))
        if n == "KVM_RUN" and not first:
            first.append(dict(counts))
            os.write(2, b"\nIMPORTS-END\n")  # -X importtime's lines after this one: after the first KVM_RUN
        counts[n] = counts.get(n, 0) + 1
        return call(fd, number, arg)
    return counting, arg_of_int
_fd._ioctl = counted
def wrap(owner, attr, label=None):
    f = getattr(owner, attr)
    label = label or attr
    def wrapped(*a, **kw):
        try:
            return f(*a, **kw)
        finally:
            mark(label)
    setattr(owner, attr, wrapped)
M = machine_mod.Machine
for a in ("spawn_daemons", "create_vm", "create_vcpus", "load_images", "load_payload"):
    wrap(M, a)
wrap(M, "_coalesce_uart_output", "uart coalescing")
wrap(pyvmm.machine.gic.VgicV3, "init", "vGIC init")
wrap(pyvmm.devices.virtio_regpage, "open_set", "regpage set")
wrap(machine_mod.virtio_notify, "supported", "eventfd caps")
wrap(M, "_add_virtio", "virtio-rng added")
wrap(machine_mod.fdt, "build", "fdt built")
wrap(machine_mod, "ensure_handler", "kick handler")
wrap(session_mod, "Machine", "Machine()")
wrap(run_cmd.machine_lib, "prepare", "prepare")
wrap(pyvmm.kvm, "open_kvm", "open_kvm")
real_start = pyvmm.api.start
def start(*a, **kw):
    mark("api.start called")
    return real_start(*a, **kw)
pyvmm.api.start = start
import atexit
def report():
    import json
    print("PROFILE " + json.dumps({"marks": marks, "ioctls": first[0] if first else counts}), file=sys.stderr, flush=True)
atexit.register(report)
real_run = M.run
def run(self, *a, **kw):
    mark("Machine.run called")
    try:
        return real_run(self, *a, **kw)
    finally:
        if self.first_run_ns is not None:
            mark("first KVM_RUN", self.first_run_ns)
M.run = run
mark("main called")
main(sys.argv[1:])
'''


def spawn_to_first_run(cmd, cwd):
    """(seconds from spawn to the first KVM_RUN, the driver's PROFILE record or None); T0 in
    ``cmd`` becomes the spawn time (CLOCK_MONOTONIC ns)."""
    t0 = time.monotonic_ns()
    errs: list = []
    t = first_run_at([c.replace("T0", str(t0)) for c in cmd], installed_env(), cwd, errs) - t0 / 1e9
    prof = None
    imports = {}
    counting = True
    for line in errs[0].decode(errors="replace").splitlines():
        if line == "IMPORTS-END":
            counting = False
        if line.startswith("PROFILE "):
            prof = json.loads(line[8:])
        elif counting and line.startswith("import time:") and "|" in line and "self [us]" not in line:
            self_us, _, name = line[12:].split("|")
            imports[name.strip()] = int(self_us)
    if prof is not None:
        prof["imports"] = imports
    return t, prof


def main():
    trees = [os.path.abspath(t) for t in sys.argv[1:]] or [CHECKOUT]
    if platform.machine() not in ("aarch64", "arm64") or not os.path.exists("/dev/kvm"):
        run = os.path.join(CHECKOUT, "ci", "qemu-aarch64", "run")
        os.execv(run, [run, "--env", f"ROUNDS={ROUNDS}", "--env", f"LOCAL={os.environ.get('LOCAL', '1')}", "--env",
                       f"PROFILE_IMPORTS={os.environ.get('PROFILE_IMPORTS', '')}", "--",
                       "python3", "bench/startup_profile.py", *trees])
    k, i = guest_files("bench/startup_profile.py")
    root = tempfile.mkdtemp(prefix="pyvmm-startprof-")
    try:
        local = copied_to(root, k, i) if os.environ.get("LOCAL", "1") == "1" else (k, i)  # LOCAL=0: the checkout's
        driver = os.path.join(root, "driver.py")
        with open(driver, "w") as f:
            f.write(DRIVER)
        venvs = [installed(os.path.join(root, f"venv{n}"), t) for n, t in enumerate(trees)]
        args = ["run", "--debug", "-k", local[0], "-i", local[1], "-m", MEM, "-c", "1"]
        imports_flag = ["-X", "importtime"] if os.environ.get("PROFILE_IMPORTS") == "1" else []
        res = {t: {"bare": [], "run": [], "prof": []} for t in trees}
        for n in range(ROUNDS + 1):
            for t, (python, command) in zip(trees, venvs):
                b = bare_python(python, installed_env())
                r, _ = spawn_to_first_run([command, *args], root)
                _, prof = spawn_to_first_run([python, *imports_flag, driver, "T0", *args], root)
                if n:
                    res[t]["bare"].append(b)
                    res[t]["run"].append(r)
                    res[t]["prof"].append(prof)
                    print(f"profile: round {n} {t}: bare {b:.3f} run {r:.3f} ({r / b:.2f}x)", file=sys.stderr,
                          flush=True)
        for t in trees:
            report(t, res[t])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(tree, r):
    med = statistics.median
    b, run = med(r["bare"]), med(r["run"])
    print(f"\n## {tree}: bare {b:.3f} s, pyvmm run to first KVM_RUN {run:.3f} s = {run / b:.2f}x "
          f"(per round: {' '.join(f'{x:.3f}' for x in r['run'])}; bare {' '.join(f'{x:.3f}' for x in r['bare'])})")
    print("\n| phase ends (driver, ms from spawn; median) | ms | step |\n|---|---|---|")
    names = [name for name, _ in r["prof"][0]["marks"]]
    prev = 0.0
    for k, name in enumerate(names):
        vals = [p["marks"][k][1] for p in r["prof"] if len(p["marks"]) > k and p["marks"][k][0] == name]
        v = med(vals)
        print(f"| {name} | {v:.1f} | {v - prev:+.1f} |")
        prev = v
    io = {}
    for p in r["prof"]:
        for name, c in p["ioctls"].items():
            io.setdefault(name, []).append(c)
    print(f"\nioctls before the first KVM_RUN: {sum(med(v) for v in io.values()):.0f}: "
          + ", ".join(f"{n} {med(v):.0f}" for n, v in sorted(io.items(), key=lambda x: -med(x[1]))))
    imps = {}
    for p in r["prof"]:
        for name, us in p.get("imports", {}).items():
            imps.setdefault(name, []).append(us)
    if imps:
        total = sum(med(v) for v in imps.values())
        own = [med(v) for name, v in imps.items() if name == "pyvmm" or name.startswith("pyvmm.")]
        print(f"\nimports (-X importtime self, median us): {len(imps)} modules, {total / 1000:.1f} ms; "
              f"pyvmm's own {len(own)}, {sum(own) / 1000:.1f} ms")
        for name, v in sorted(imps.items(), key=lambda x: -med(x[1])):
            print(f"  {med(v) / 1000:7.2f} ms  {name}")


if __name__ == "__main__":
    main()

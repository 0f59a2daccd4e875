#!/usr/bin/env python3
"""Live snapshot and restore of a running Linux guest: pyvmm vs QEMU's migration to a file.

Inside one test-machine run (or natively on an arm64 KVM host) it boots the
default guest (guests/linux: Debian's kernel, busybox initramfs, 1 vCPU, PL011
console) with a ``pyvmm.cmd`` script that first fills a quarter of guest RAM
with non-zero data in tmpfs (1 MiB from /dev/urandom, repeated; quick under
emulation, incompressible within a page) and then prints ``tick N`` every
0.2 s forever. For each RAM size and each round, once per VMM:

  pyvmm  ``pyvmm run ... --control SOCK``; once a tick is seen, the wall time
         of ``pyvmm snapshot SOCK FILE`` (pause, write, resume) and the file's
         size; then the VM is killed and ``pyvmm restore FILE`` spawned:
         restore-to-running is from that spawn to the first new ``tick`` line
         on its console.
  QEMU   ``qemu-system-aarch64 -accel kvm ... -qmp unix:SOCK``; once a tick is
         seen, QMP ``stop`` + ``migrate file:FILE``, polling query-migrate
         until "completed" (snapshot time) and the file's size; QEMU is killed
         and a new one spawned with the same arguments plus ``-incoming
         file:FILE``; once the incoming migration has loaded (the guest is then
         paused, as it was when saved) QMP ``cont``; restore-to-running is from
         the spawn to the first new ``tick`` line (the time until query-status
         says "running" is shown too).

Prints the medians per RAM size, the ratio pyvmm/QEMU and the targets of
issue 13 (restore-to-running <= 0.25, snapshot time <= 1.0, file size on
disk <= 1.0; pyvmm's version-2 file is sparse, so its st_size is shown too),
and with several sizes, restore-to-running growth from the smallest to the
largest (pyvmm < 2; e.g. --sizes 128,512,2048). Exit status 0 when everything
ran (a missed target is a result, not a failure), 1 when something failed to
run, 130 when interrupted. Progress goes to stderr.

Usage: python3 bench/snapshot.py [--rounds N] [--sizes 128,512] [--only qemu|pyvmm]
                                 [--clock keep|hide|default]
(on a non-arm64 host it re-runs itself inside ci/qemu-aarch64/run; build the
guest first with guests/linux/build).
"""
from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from _common import env, guest_in_test_machine
from pyvmm.unix_socket import SocketNotUp, wait_for_socket

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
PROG = "bench/snapshot"
FILL_FRACTION = 4          # the guest dirties 1/FILL_FRACTION of its RAM
TICK = re.compile(rb"tick (\d+)")
BOOT_TIMEOUT = 600         # boot + fill, seconds (512 MiB under emulation takes a while)
STEP_TIMEOUT = 600         # one snapshot, or one restore up to running
RESTORE_TIMEOUT = 300      # from a restored (running) VMM to its first tick
POLL = 0.01                # QMP polling interval
TARGET_RESTORE = 0.25      # issue 13: restore-to-running, 512 MiB, vs QEMU -incoming file:
TARGET_SNAPSHOT = 1.0
TARGET_SIZE = 1.0
TARGET_GROWTH = 2.0        # restore-to-running, largest size / smallest size


class BenchError(Exception):
    """Something failed to run: one line, printed as the error."""


# -- processes -------------------------------------------------------------

LIVE = set()  # every child process still to be killed on the way out




def kill_group(p):
    """SIGKILL the process group of ``p`` (started in its own session) and reap it."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


class Console(threading.Thread):
    """Reads a VMM's stdout (the guest console) line by line and records
    each ``tick N`` line with the time it arrived."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.cond = threading.Condition()
        self.ticks = []                           # (N, monotonic time)
        self.tail = collections.deque(maxlen=20)  # last lines, for error messages
        self.head = []                            # first lines, (line, time): see joined_tick
        self.partial = b""                        # what followed the last newline at EOF
        self.closed = False
        self.start()

    def run(self):
        buf = b""
        try:
            for chunk in iter(lambda: self.stream.read1(65536), b""):
                now = time.monotonic()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                with self.cond:
                    for line in lines:
                        line = line.strip(b"\r ")
                        if not line:
                            continue
                        self.tail.append(line)
                        if len(self.head) < 5:
                            self.head.append((line, now))
                        m = TICK.fullmatch(line)
                        if m:
                            self.ticks.append((int(m.group(1)), now))
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass
        with self.cond:
            self.partial = buf.strip(b"\r ")
            self.closed = True
            self.cond.notify_all()

    def joined_tick(self, before):
        """A tick line the guest began on the VMM before (``before.partial``,
        cut off when that VMM paused it for good) and ended here, as
        (N, time of its end), or None: the console is one stream across a
        migration or a snapshot, and a line may straddle the hand-over."""
        with self.cond:
            if not before.partial or not self.head:
                return None
            line, t = self.head[0]
            m = TICK.fullmatch(before.partial + line)
            return (int(m.group(1)), t) if m else None

    def last_tick(self):
        with self.cond:
            return self.ticks[-1][0] if self.ticks else -1

    def lines(self):
        with self.cond:
            return list(self.tail)


class Vmm:
    """A VMM process in its own session: stdout read by a Console, stderr to a file."""

    count = 0

    def __init__(self, name, cmd, tmp):
        self.name = name
        Vmm.count += 1
        self.errpath = os.path.join(tmp, f"{name}.{Vmm.count}.stderr")
        with open(self.errpath, "wb") as errf:
            self.t0 = time.monotonic()
            self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf,
                                      env=env(), cwd=CHECKOUT, start_new_session=True)
        LIVE.add(self.p)
        self.console = Console(self.p.stdout)

    def stderr_tail(self, n=400):
        try:
            with open(self.errpath, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        return " ".join(data.decode(errors="replace").split())[-n:]

    def why(self):
        """What the process said, for an error message."""
        rc = self.p.poll()
        state = "still running" if rc is None else f"exited {rc}"
        out = " | ".join(x.decode(errors="replace") for x in self.console.lines()[-4:])
        err = self.stderr_tail()
        return f"{self.name} {state}; console: {out or '(nothing)'}; stderr: {err or '(nothing)'}"

    def wait_tick(self, after, timeout, what):
        """(N, time) of the first tick line with N > after."""
        deadline = time.monotonic() + timeout
        c = self.console
        with c.cond:
            i = 0
            while True:
                while i < len(c.ticks):
                    n, t = c.ticks[i]
                    if n > after:
                        return n, t
                    i += 1
                if any(b"Kernel panic" in line for line in c.tail):
                    raise BenchError(f"{what}: the guest kernel panicked: {self.why()}")
                if c.closed or self.p.poll() is not None:
                    raise BenchError(f"{what}: no tick line before the VMM stopped: {self.why()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{what}: no tick line within {timeout:g} s: {self.why()}")
                c.cond.wait(min(left, 0.5))

    def kill(self):
        kill_group(self.p)
        self.console.join(5)
        self.p.stdout.close()
        LIVE.discard(self.p)


def run_tool(cmd, timeout, what):
    """Run a short command in its own session; (wall seconds, stdout, stderr). Raises on failure."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env(), cwd=CHECKOUT, start_new_session=True)
    LIVE.add(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise BenchError(f"{what}: {' '.join(cmd[2:4])} did not finish within {timeout:g} s") from None
    finally:
        LIVE.discard(p)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        said = " ".join((err or out).decode(errors="replace").split())[-400:]
        raise BenchError(f"{what}: `{' '.join(cmd[2:])}` exited {p.returncode}: {said or '(no output)'}")
    return wall, out, err


def snapshot_startup(tmp):
    """Seconds from spawning ``pyvmm snapshot SOCK FILE`` to its exit when
    SOCK does not exist: the command's own start-up (the same program path
    and imports as a real snapshot, up to connecting), without the VM's work."""
    missing = os.path.join(tmp, "no-such-vm.ctl")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pyvmm", "snapshot", missing, os.path.join(tmp, "never.snap")],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
                       cwd=CHECKOUT, timeout=STEP_TIMEOUT)
    wall = time.monotonic() - t0
    if p.returncode != 2 or b"no control socket" not in p.stderr:
        raise BenchError(f"pyvmm snapshot on a missing socket: expected exit 2 'no control socket', got "
                         f"{p.returncode}: {' '.join(p.stderr.decode(errors='replace').split())[-300:]}")
    return wall


# -- QMP -------------------------------------------------------------------

class Qmp:
    """A minimal QMP client over a unix socket (one command at a time; the
    events that arrive meanwhile are kept in ``events``)."""

    def __init__(self, path, vmm, timeout=STEP_TIMEOUT):
        try:
            s = wait_for_socket(path, 60, lambda: None if vmm.p.poll() is None else vmm.why(), connect=True,
                                poll=POLL)
        except SocketNotUp as e:
            raise BenchError(f"QEMU exited before its QMP socket was up: {e.died}" if e.died is not None
                             else f"QMP socket {path} not up within 60 s: {vmm.why()}") from None
        s.settimeout(timeout)
        self.s, self.f, self.vmm = s, s.makefile("rb"), vmm
        self.events = []
        greeting = self._read("greeting")
        if "QMP" not in greeting:
            raise BenchError(f"QMP: unexpected greeting {greeting!r}")
        self.cmd("qmp_capabilities")

    def _read(self, what):
        try:
            line = self.f.readline()
        except socket.timeout:
            raise BenchError(f"QMP {what}: no answer: {self.vmm.why()}") from None
        if not line:
            raise BenchError(f"QMP {what}: connection closed: {self.vmm.why()}")
        return json.loads(line)

    def cmd(self, name, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read(name)
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise BenchError(f"QMP {name}: {r['error'].get('desc', r['error'])}")
            if "event" in r:
                self.events.append(r)

    def event_time(self, name):
        """The wall-clock time (s) of the first ``name`` event seen, or None."""
        for e in self.events:
            if e.get("event") == name and isinstance(e.get("timestamp"), dict):
                return e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6
        return None

    def close(self):
        self.f.close()
        self.s.close()


def migration_completed(qmp, t0, what):
    """Poll query-migrate until "completed" (its answer), failing on failed/cancelled or STEP_TIMEOUT after t0."""
    while True:
        st = qmp.cmd("query-migrate")
        status = st.get("status")
        if status == "completed":
            return st
        if status in ("failed", "cancelled"):
            raise BenchError(f"{what}: {status}: {st.get('error-desc', '')}")
        if time.monotonic() - t0 > STEP_TIMEOUT:
            raise BenchError(f"{what}: not completed within {STEP_TIMEOUT} s ({status})")
        time.sleep(POLL)


# -- guest and VMM command lines --------------------------------------------




def workload(mib):
    """The guest's script: fill mib/FILL_FRACTION MiB of tmpfs, then tick every 0.2 s."""
    fill = mib // FILL_FRACTION
    s = ("head -c 1048576 /dev/urandom >/tmp/seed\n"
         f"i=0; while [ $i -lt {fill} ]; do cat /tmp/seed; i=$((i + 1)); done >/tmp/fill\n"
         "rm /tmp/seed\n"
         "echo \"fill: $(du -k /tmp/fill | cut -f1) KiB, uptime $(cut -d' ' -f1 /proc/uptime) s\"\n"
         "n=0; while :; do echo \"tick $n\"; n=$((n + 1)); sleep 0.2; done\n")
    # No cma=0: pyvmm places initrd and DTB as QEMU does (pyvmm/boot/layout.py), so
    # Debian's kernel finds no 64 MiB window for CMA in a 128 MiB guest under either VMM.
    return "quiet pyvmm.cmd=" + base64.b64encode(s.encode()).decode()


def qemu_cmd(k, i, mib, qmp_sock, incoming=None):
    q = shutil.which("qemu-system-aarch64")
    if not q:
        raise BenchError("qemu-system-aarch64 not found (the test machine's guest root has qemu-system-arm)")
    cmd = [q, "-accel", "kvm", "-M", "virt,gic-version=3", "-cpu", "host", "-m", f"{mib}M", "-smp", "1",
           "-nographic", "-no-reboot", "-nic", "none", "-monitor", "none", "-kernel", k, "-initrd", i,
           "-serial", "stdio", "-append", f"console=ttyAMA0 {workload(mib)}",
           "-qmp", f"unix:{qmp_sock},server=on,wait=off"]
    if incoming:
        cmd += ["-incoming", f"file:{incoming}"]
    return cmd


def pyvmm_run_cmd(k, i, mib, control):
    return [sys.executable, "-m", "pyvmm", "run", "-k", k, "-i", i, "-m", f"{mib}M", "-c", "1",
            "--console", "serial", "-p", workload(mib), "--control", control]


# -- one round per VMM -------------------------------------------------------

def remove(*paths):
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def round_qemu(k, i, mib, tmp):
    """{'snapshot': s, 'size': bytes, 'restore': s, 'running': s} for one QEMU round."""
    snap = os.path.join(tmp, "qemu.mig")
    qsock = os.path.join(tmp, "qemu.qmp")
    rsock = os.path.join(tmp, "qemu-restore.qmp")
    src = dst = None
    qmp = None
    try:
        src = Vmm("qemu", qemu_cmd(k, i, mib, qsock), tmp)
        src.wait_tick(-1, BOOT_TIMEOUT, f"QEMU {mib} MiB boot")
        qmp = Qmp(qsock, src)
        before = src.console.last_tick()
        t0 = time.monotonic()
        qmp.cmd("stop")
        qmp.cmd("migrate", uri=f"file:{snap}")
        migration_completed(qmp, t0, "QEMU migrate to file")
        t_snap = time.monotonic() - t0
        size = os.path.getsize(snap)
        qmp.close()
        qmp = None
        src.kill()
        src = None

        dst = Vmm("qemu-restore", qemu_cmd(k, i, mib, rsock, incoming=snap), tmp)
        qmp = Qmp(rsock, dst)
        cont = False
        while True:
            status = qmp.cmd("query-status")["status"]
            if status == "running":
                break
            if status in ("paused", "postmigrate", "prelaunch"):
                qmp.cmd("cont")
                cont = True
            elif status != "inmigrate":
                raise BenchError(f"QEMU -incoming: unexpected run state {status!r}: {dst.why()}")
            if time.monotonic() - dst.t0 > STEP_TIMEOUT:
                raise BenchError(f"QEMU -incoming: not running within {STEP_TIMEOUT} s ({status})")
            time.sleep(POLL)
        t_running = time.monotonic() - dst.t0
        n, t = dst.wait_tick(-1, RESTORE_TIMEOUT, f"QEMU {mib} MiB restore")
        if n <= before:
            raise BenchError(f"QEMU restore: first tick {n} is not after the last one before the snapshot ({before})")
        return {"snapshot": t_snap, "size": size, "disk": os.stat(snap).st_blocks * 512, "restore": t - dst.t0,
                "running": t_running, "cont": cont}
    finally:
        if qmp:
            qmp.close()
        for v in (src, dst):
            if v:
                v.kill()
        remove(snap, qsock, rsock)


def round_pyvmm(k, i, mib, tmp, clock):
    """{'snapshot': s, 'size': bytes, 'restore': s, 'resumed': bool} for one pyvmm round."""
    snap = os.path.join(tmp, "pyvmm.snap")
    csock = os.path.join(tmp, "pyvmm.ctl")
    rsock = os.path.join(tmp, "pyvmm-restore.ctl")
    src = dst = None
    try:
        src = Vmm("pyvmm", pyvmm_run_cmd(k, i, mib, csock), tmp)
        src.wait_tick(-1, BOOT_TIMEOUT, f"pyvmm {mib} MiB boot")
        # the client's own start-up, part of the snapshot time below (context, not a target)
        t_cli = snapshot_startup(tmp)
        before = src.console.last_tick()
        t_snap, _, _ = run_tool([sys.executable, "-m", "pyvmm", "snapshot", csock, snap], STEP_TIMEOUT,
                                f"pyvmm {mib} MiB snapshot")
        if not os.path.isfile(snap):
            raise BenchError(f"pyvmm snapshot exited 0 but {snap} does not exist")
        size = os.path.getsize(snap)
        disk = os.stat(snap).st_blocks * 512  # version 2 is sparse: zero pages are holes
        # a live snapshot: the guest goes on ticking afterwards (a check, not a measurement)
        resumed = True
        try:
            src.wait_tick(src.console.last_tick(), 10, "pyvmm after snapshot")
        except BenchError as e:
            resumed = False
            print(f"{PROG}: warning: the snapshotted guest did not tick again within 10 s ({e})",
                  file=sys.stderr, flush=True)
        src.kill()
        src = None

        cmd = [sys.executable, "-m", "pyvmm", "restore", snap, "--control", rsock]
        if clock != "default":
            cmd += ["--clock", clock]
        dst = Vmm("pyvmm-restore", cmd, tmp)
        try:
            n, t = dst.wait_tick(-1, RESTORE_TIMEOUT, f"pyvmm {mib} MiB restore")
        except BenchError as e:
            if dst.p.poll() is None:  # still running: what does its control socket say?
                try:
                    _, out, err = run_tool([sys.executable, "-m", "pyvmm", "status", rsock], 60, "pyvmm status")
                    said = " ".join((out + err).decode(errors="replace").split())
                except BenchError as e2:
                    said = str(e2)
                raise BenchError(f"{e}; pyvmm status {rsock}: {said[-400:]}") from None
            raise
        if n <= before:
            raise BenchError(f"pyvmm restore: first tick {n} is not after the last one before the snapshot ({before})")
        return {"snapshot": t_snap, "size": size, "disk": disk, "restore": t - dst.t0, "resumed": resumed,
                "cli": t_cli}
    finally:
        for v in (src, dst):
            if v:
                v.kill()
        remove(snap, csock, rsock)


# -- report ----------------------------------------------------------------

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, unit="", digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def report(results, sizes, vmms, rounds, clock):
    print(f"\n## Live snapshot + restore: pyvmm vs QEMU migrate to file ({rounds} rounds each, medians; "
          f"1 vCPU, Debian kernel, busybox initramfs, PL011 console)\n")
    print(f"Guest: fills 1/{FILL_FRACTION} of RAM with non-zero data in tmpfs (1 MiB from /dev/urandom, repeated),\n"
          f"then prints `tick N` every 0.2 s; kernel arguments `quiet`. Files in {tempfile.gettempdir()}.\n"
          "Snapshot time: pyvmm = wall time of `pyvmm snapshot SOCK FILE` (pause, write, resume);\n"
          "QEMU = QMP stop + migrate file:FILE until query-migrate says completed.\n"
          "Restore to running: spawn of `pyvmm restore FILE` / `qemu-system-aarch64 ... -incoming file:FILE`\n"
          f"(+ QMP cont once loaded) until the first new tick line on its console. pyvmm restore --clock {clock}.")
    for mib in sizes:
        p = {m: median([r[m] for r in results[mib].get("pyvmm", [])])
             for m in ("snapshot", "size", "disk", "restore", "cli")}
        q = {m: median([r[m] for r in results[mib].get("qemu", [])])
             for m in ("snapshot", "size", "disk", "restore", "running")}

        def ratio(m):
            return p[m] / q[m] if p.get(m) is not None and q.get(m) else None

        def target(m, limit):
            r = ratio(m)
            if r is None:
                return f"<= {limit} (n/a)"
            return f"<= {limit} ({'met' if r <= limit else 'MISSED'})"

        mb = (lambda x: None if x is None else x / (1 << 20))
        print(f"\n### {mib} MiB guest ({mib // FILL_FRACTION} MiB dirtied)\n")
        print("| metric | pyvmm | QEMU | pyvmm/QEMU | target |")
        print("|---|---|---|---|---|")
        print(f"| snapshot time | {fmt(p['snapshot'], ' s')} | {fmt(q['snapshot'], ' s')} | "
              f"{fmt(ratio('snapshot'))} | {target('snapshot', TARGET_SNAPSHOT)} |")
        print(f"| snapshot file size on disk (blocks) | {fmt(mb(p['disk']), ' MiB', 1)} | {fmt(mb(q['disk']), ' MiB', 1)} | "
              f"{fmt(ratio('disk'))} | {target('disk', TARGET_SIZE)} |")
        print(f"| snapshot file size (st_size; pyvmm's is sparse) | {fmt(mb(p['size']), ' MiB', 1)} | "
              f"{fmt(mb(q['size']), ' MiB', 1)} | {fmt(ratio('size'))} | |")
        print(f"| restore to running (first new tick) | {fmt(p['restore'], ' s')} | {fmt(q['restore'], ' s')} | "
              f"{fmt(ratio('restore'))} | {target('restore', TARGET_RESTORE)} |")
        if "pyvmm" in vmms:
            print(f"| pyvmm: `pyvmm snapshot` start-up (to its error on a missing socket) | {fmt(p['cli'], ' s')} "
                  "| | | |")
        if "qemu" in vmms:
            print(f"| QEMU: spawn to query-status running | | {fmt(q['running'], ' s')} | | |")
        if "pyvmm" in vmms and not all(r["resumed"] for r in results[mib].get("pyvmm", [])):
            print("\nNote: in some rounds the snapshotted pyvmm guest did not tick again after `pyvmm snapshot`.")
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        print(f"\n### Restore-to-running growth from {lo} MiB to {hi} MiB\n")
        print("| VMM | growth | target |")
        print("|---|---|---|")
        for name in vmms:
            a = median([r["restore"] for r in results[lo].get(name, [])])
            b = median([r["restore"] for r in results[hi].get(name, [])])
            g = b / a if a and b else None
            print(f"| {name} | {fmt(g)} | {'< ' + str(TARGET_GROWTH) + (' (met)' if g and g < TARGET_GROWTH else ' (MISSED)') if name == 'pyvmm' else ''} |")


# -- main ------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/snapshot.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("PYVMM_BENCH_RUNS", "3")), metavar="N",
                    help="measurements per VMM and RAM size (default 3; medians are reported)")
    ap.add_argument("--sizes", default="128,512", metavar="MIB,...", help="guest RAM sizes in MiB (default 128,512)")
    ap.add_argument("--only", choices=("qemu", "pyvmm"), help="measure only this VMM")
    ap.add_argument("--clock", choices=("keep", "hide", "default"), default="hide",
                    help="pyvmm restore --clock (default hide: the guest does not see the time it was saved, "
                         "as QEMU's arm64 KVM virtual counter after migration); default = do not pass it")
    a = ap.parse_args(argv)
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    try:
        a.sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--sizes {a.sizes!r}: expected MiB numbers separated by commas, e.g. 128,512")
    if not a.sizes or any(s < 64 or s % FILL_FRACTION for s in a.sizes):
        ap.error(f"--sizes: each size must be at least 64 MiB and a multiple of {FILL_FRACTION}")
    return a


def _term(signum, frame):
    raise KeyboardInterrupt


def guarded(prog, prefix, body):
    """``body(tmp)`` with a fresh temporary directory: exit status 0, 1 on a
    BenchError (printed as one line), 130 when interrupted (SIGTERM too);
    every child still running is killed and the directory removed."""
    signal.signal(signal.SIGTERM, _term)
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        body(tmp)
        return 0
    except BenchError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        for p in list(LIVE):
            kill_group(p)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv):
    args = parse_args(argv)
    k, i = guest_in_test_machine("bench/snapshot.py", argv, PROG)
    vmms = [args.only] if args.only else ["pyvmm", "qemu"]
    results = {mib: {v: [] for v in vmms} for mib in args.sizes}

    def body(tmp):
        for mib in args.sizes:
            for n in range(args.rounds):
                for name in vmms:
                    r = round_pyvmm(k, i, mib, tmp, args.clock) if name == "pyvmm" else round_qemu(k, i, mib, tmp)
                    results[mib][name].append(r)
                    extra = (f", snapshot start-up {r['cli']:.2f} s" if name == "pyvmm" else "") + (
                        f", query-status running {r['running']:.2f} s"
                        f"{' (after cont)' if r['cont'] else ''}" if name == "qemu" else "")
                    print(f"bench: {mib} MiB round {n + 1}/{args.rounds} {name}: snapshot {r['snapshot']:.2f} s, "
                          f"{r['size'] / (1 << 20):.1f} MiB, restore to tick {r['restore']:.2f} s{extra}",
                          file=sys.stderr, flush=True)
        report(results, args.sizes, vmms, args.rounds, args.clock)

    return guarded(PROG, "pyvmm-bench-snapshot-", body)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Live migration of a running Linux guest: ``pyvmm migrate`` vs QEMU ``migrate``
to a second QEMU started with ``-incoming``, same guest, same test-machine run.

The guest (guests/linux: Debian's kernel, busybox initramfs, 1 vCPU, PL011
console) first fills a quarter of its RAM with non-zero data in tmpfs, then
writes memory at a fixed rate: every 0.1 s it rewrites 1 MiB of a 16 MiB
tmpfs file (a different MiB each time) and prints ``tick N``. For each RAM size
and round, once per VMM:

  pyvmm  ``pyvmm run ... --control SOCK`` and ``pyvmm restore --incoming
         unix:IN``; once a tick is seen, ``pyvmm migrate SOCK unix:IN --json
         --max-downtime 300``: downtime and total time as it reports them,
         and the destination's first new tick.
  QEMU   ``qemu-system-aarch64 -accel kvm ... -qmp unix:Q`` and the same with
         ``-incoming unix:IN``; QMP ``migrate-set-parameters downtime-limit=300``
         then ``migrate uri=unix:IN``, polling ``query-migrate`` until
         "completed": its ``downtime`` and ``total-time``; the destination's
         first new tick.

Prints the medians per RAM size and the ratios pyvmm/QEMU (targets: downtime
<= 1.0, total time <= 1.0). Exit status 0 when everything ran, 1 when
something failed to run, 130 when interrupted.

Usage: python3 bench/migration.py [--rounds N] [--sizes 256] [--only qemu|pyvmm]
(on a non-arm64 host it re-runs itself inside ci/qemu-aarch64/run).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import snapshot as common  # bench/snapshot.py: processes, consoles, QMP
from _common import guest_files

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
PROG = "bench/migration"
MAX_DOWNTIME_MS = 300
BenchError = common.BenchError
Vmm = common.Vmm


def workload(mib):
    fill = mib // 4
    s = ("head -c 1048576 /dev/urandom >/tmp/seed\n"
         f"i=0; while [ $i -lt {fill} ]; do cat /tmp/seed; i=$((i + 1)); done >/tmp/fill\n"
         "i=0; while [ $i -lt 16 ]; do cat /tmp/seed; i=$((i + 1)); done >/tmp/hot\n"
         "n=0; while :; do dd if=/tmp/seed of=/tmp/hot bs=1048576 count=1 seek=$((n % 16)) conv=notrunc "
         "2>/dev/null; echo \"tick $n\"; n=$((n + 1)); sleep 0.1; done\n")
    return "quiet cma=0 pyvmm.cmd=" + base64.b64encode(s.encode()).decode()


def qemu_cmd(k, i, mib, qmp_sock, incoming=None):
    q = shutil.which("qemu-system-aarch64")
    if not q:
        raise BenchError("qemu-system-aarch64 not found")
    cmd = [q, "-accel", "kvm", "-M", "virt,gic-version=3", "-cpu", "host", "-m", f"{mib}M", "-smp", "1",
           "-nographic", "-no-reboot", "-nic", "none", "-monitor", "none", "-kernel", k, "-initrd", i,
           "-serial", "stdio", "-append", f"console=ttyAMA0 {workload(mib)}",
           "-qmp", f"unix:{qmp_sock},server=on,wait=off"]
    if incoming:
        cmd += ["-incoming", f"unix:{incoming}"]
    return cmd


def wait_path(path, vmm, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if vmm.p.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{path} did not appear: {vmm.why()}")
        time.sleep(0.05)


def round_qemu(k, i, mib, tmp):
    qsock, dsock, inc = (os.path.join(tmp, n) for n in ("q.qmp", "qd.qmp", "q.in"))
    src = dst = qmp = None
    try:
        src = Vmm("qemu", qemu_cmd(k, i, mib, qsock), tmp)
        dst = Vmm("qemu-incoming", qemu_cmd(k, i, mib, dsock, incoming=inc), tmp)
        src.wait_tick(5, common.BOOT_TIMEOUT, f"QEMU {mib} MiB boot")
        wait_path(inc, dst)
        qmp = common.Qmp(qsock, src)
        qmp.cmd("migrate-set-parameters", **{"downtime-limit": MAX_DOWNTIME_MS})
        before = src.console.last_tick()
        t0 = time.monotonic()
        qmp.cmd("migrate", uri=f"unix:{inc}")
        while True:
            st = qmp.cmd("query-migrate")
            status = st.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise BenchError(f"QEMU migrate: {status}: {st.get('error-desc', '')}")
            if time.monotonic() - t0 > common.STEP_TIMEOUT:
                raise BenchError(f"QEMU migrate: not completed within {common.STEP_TIMEOUT} s ({status})")
            time.sleep(common.POLL)
        n, _ = dst.wait_tick(before, common.RESTORE_TIMEOUT, f"QEMU {mib} MiB destination")
        ram = st.get("ram", {})
        return {"downtime": st["downtime"] / 1000, "total": st["total-time"] / 1000,
                "bytes": ram.get("transferred", 0), "rounds": ram.get("dirty-sync-count", 0)}
    finally:
        if qmp:
            qmp.close()
        for v in (src, dst):
            if v:
                v.kill()
        common.remove(qsock, dsock, inc)


def round_pyvmm(k, i, mib, tmp):
    csock, inc = os.path.join(tmp, "p.ctl"), os.path.join(tmp, "p.in")
    src = dst = None
    try:
        src = Vmm("pyvmm", common.pyvmm_run_cmd(k, i, mib, csock)[:-4] + ["-p", workload(mib), "--control", csock],
                  tmp)
        dst = Vmm("pyvmm-incoming", [sys.executable, "-m", "pyvmm", "restore", "--incoming", f"unix:{inc}"], tmp)
        src.wait_tick(5, common.BOOT_TIMEOUT, f"pyvmm {mib} MiB boot")
        wait_path(inc, dst)
        before = src.console.last_tick()
        _, out, _ = common.run_tool([sys.executable, "-m", "pyvmm", "migrate", csock, f"unix:{inc}", "--json",
                                     "--max-downtime", str(MAX_DOWNTIME_MS)], common.STEP_TIMEOUT,
                                    f"pyvmm {mib} MiB migrate")
        r = json.loads(out)
        dst.wait_tick(before, common.RESTORE_TIMEOUT, f"pyvmm {mib} MiB destination")
        return {"downtime": r["downtime_ms"] / 1000, "total": r["total_ms"] / 1000, "bytes": r["bytes"],
                "rounds": r["rounds"]}
    finally:
        for v in (src, dst):
            if v:
                v.kill()
        common.remove(csock, inc)


def report(results, sizes, vmms, rounds):
    print(f"\n## Live migration: pyvmm migrate vs QEMU migrate to -incoming ({rounds} rounds each, medians; "
          "1 vCPU, unix socket, max downtime 300 ms)\n")
    print("Guest: fills 1/4 of RAM in tmpfs, then rewrites 1 MiB of a 16 MiB tmpfs file every 0.1 s.\n"
          "Downtime and total time as each VMM reports them (pyvmm migrate --json; QEMU query-migrate).")
    for mib in sizes:
        p = {m: common.median([r[m] for r in results[mib].get("pyvmm", [])]) for m in ("downtime", "total", "bytes",
                                                                                        "rounds")}
        q = {m: common.median([r[m] for r in results[mib].get("qemu", [])]) for m in ("downtime", "total", "bytes",
                                                                                       "rounds")}

        def ratio(m):
            return p[m] / q[m] if p.get(m) is not None and q.get(m) else None
        mb = (lambda x: None if x is None else x / (1 << 20))
        print(f"\n### {mib} MiB guest\n")
        print("| metric | pyvmm | QEMU | pyvmm/QEMU | target |")
        print("|---|---|---|---|---|")
        print(f"| downtime | {common.fmt(p['downtime'], ' s', 3)} | {common.fmt(q['downtime'], ' s', 3)} | "
              f"{common.fmt(ratio('downtime'))} | <= 1.0 |")
        print(f"| total migration time | {common.fmt(p['total'], ' s')} | {common.fmt(q['total'], ' s')} | "
              f"{common.fmt(ratio('total'))} | <= 1.0 |")
        print(f"| bytes sent | {common.fmt(mb(p['bytes']), ' MiB', 1)} | {common.fmt(mb(q['bytes']), ' MiB', 1)} | "
              f"{common.fmt(ratio('bytes'))} | |")
        print(f"| rounds (QEMU: dirty syncs) | {common.fmt(p['rounds'], '', 0)} | {common.fmt(q['rounds'], '', 0)} "
              "| | |")


def main(argv):
    ap = argparse.ArgumentParser(prog="bench/migration.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("PYVMM_BENCH_RUNS", "3")), metavar="N")
    ap.add_argument("--sizes", default="256", metavar="MIB,...")
    ap.add_argument("--only", choices=("qemu", "pyvmm"))
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    if platform.machine() not in ("aarch64", "arm64") or not os.path.exists("/dev/kvm"):
        run = os.path.join(CHECKOUT, "ci", "qemu-aarch64", "run")
        guest_files(PROG)
        os.execv(run, [run, "--", "python3", "bench/migration.py", *argv])
    k, i = guest_files(PROG)
    vmms = [args.only] if args.only else ["pyvmm", "qemu"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(CHECKOUT, "pyvmm")], check=False)
    signal.signal(signal.SIGTERM, common._term)
    tmp = tempfile.mkdtemp(prefix="pyvmm-bench-migration-")
    results = {mib: {v: [] for v in vmms} for mib in sizes}
    try:
        for mib in sizes:
            for n in range(args.rounds):
                for name in vmms:
                    r = round_pyvmm(k, i, mib, tmp) if name == "pyvmm" else round_qemu(k, i, mib, tmp)
                    results[mib][name].append(r)
                    print(f"bench: {mib} MiB round {n + 1}/{args.rounds} {name}: downtime {r['downtime'] * 1000:.0f} "
                          f"ms, total {r['total']:.2f} s, {r['bytes'] / (1 << 20):.1f} MiB, {r['rounds']} rounds",
                          file=sys.stderr, flush=True)
        report(results, sizes, vmms, args.rounds)
        return 0
    except BenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        for p in list(common.LIVE):
            common.kill_group(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

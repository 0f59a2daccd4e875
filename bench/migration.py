#!/usr/bin/env python3
"""Live migration of a running Linux guest: pyvmm migrate vs QEMU migrate to a second QEMU -incoming.

Inside one test-machine run (or natively on an arm64 KVM host) it boots the
default guest (guests/linux: Debian's kernel, busybox initramfs, 1 vCPU, PL011
console) with a ``pyvmm.cmd`` script that fills a quarter of guest RAM with
non-zero data in tmpfs, then forever: rewrites one MiB of a 16 MiB tmpfs file
(the next one, round robin) and prints ``tick N``, every 0.2 s. So the guest
writes memory at a fixed rate (about 5 MiB/s) while it is moved. Per round,
once per VMM, both hosts on the same machine over a unix socket:

  pyvmm  ``pyvmm run ... --control SOCK`` and ``pyvmm restore --incoming
         unix:PATH``; once a tick is seen, ``pyvmm migrate SOCK unix:PATH
         --json``: its report gives ``sent_ms`` (the guest's pause until the
         source sent everything), ``downtime_ms`` (the pause until the
         destination said it runs the guest) and total time (the VMM's own
         figures); the command's wall time includes the CLI's start-up.
  QEMU   ``qemu-system-aarch64 -accel kvm ... -qmp`` and the same command plus
         ``-incoming unix:PATH``; QMP ``migrate`` until query-migrate says
         completed: its ``downtime`` (which ends when the source has sent
         everything: compared with pyvmm's ``sent_ms``) and ``total-time``;
         the source's STOP event to the destination's RESUME event is its
         pause until running. Both VMMs at their defaults (300 ms maximum
         downtime, no bandwidth cap: QEMU's max-bandwidth is raised to
         100 GiB/s, pyvmm has none).

For both, the guest's own view is measured too: the gap between the last
tick line on the source's console and the first one on the destination's
(its ``N`` must follow on, no tick lost or repeated; one line cut by the
hand-over and lost is reported on stderr and that round's gap not
counted), which counts every stop whichever VMM reports it.

Prints medians, the ratios pyvmm/QEMU and issue 13's targets (downtime <=
QEMU's, total migration time <= 1.0x). Exit status 0 when everything ran (a
missed target is a result), 1 when something failed to run, 130 when
interrupted. Progress goes to stderr.

With ``--net-transports`` (or PYVMM_BENCH_NET_TRANSPORTS=mmio,pci) pyvmm's
guest gets a virtio-net device on a tap it creates, once per transport
listed, and the pyvmm rounds run once per transport (a machine with
virtio-pci moves its ITS and MSI-X state too); the report adds each
transport's medians and their ratio to the first transport's, same run.

Usage: python3 bench/migration.py [--rounds N] [--mem MIB] [--only qemu|pyvmm]
                                  [--net-transports mmio,pci]
(on a non-arm64 host it re-runs itself inside ci/qemu-aarch64/run; build the
guest first with guests/linux/build).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time

from _common import guest_in_test_machine
from snapshot import BenchError, Qmp, Vmm, guarded, median, migration_completed, qemu_cmd, run_tool

PROG = "bench/migration"
BOOT_TIMEOUT = 600
STEP_TIMEOUT = 600
TICK_TIMEOUT = 120         # from the end of a migration to the destination's first tick
WINDOW_MIB = 16            # the region the guest rewrites, one MiB per tick
TARGET_DOWNTIME = 1.0      # pyvmm / QEMU
TARGET_TOTAL = 1.0


def workload(mib):
    """Fill mib/4 MiB of tmpfs, then every 0.2 s rewrite the next MiB of a 16 MiB file and tick."""
    s = ("head -c 1048576 /dev/urandom >/tmp/seed\n"
         f"i=0; while [ $i -lt {mib // 4} ]; do cat /tmp/seed; i=$((i + 1)); done >/tmp/fill\n"
         f"i=0; while [ $i -lt {WINDOW_MIB} ]; do cat /tmp/seed; i=$((i + 1)); done >/tmp/window\n"
         "n=0; while :; do\n"
         f"  dd if=/tmp/seed of=/tmp/window bs=1048576 count=1 seek=$((n % {WINDOW_MIB})) conv=notrunc 2>/dev/null\n"
         "  echo \"tick $n\"; n=$((n + 1)); sleep 0.2\n"
         "done\n")
    return "quiet pyvmm.cmd=" + base64.b64encode(s.encode()).decode()


def guest_gap(src: Vmm, dst: Vmm, what: str, may_lose_a_line: bool = False):
    """Seconds between the source's last tick and the destination's first,
    checking N follows on. ``may_lose_a_line``: a tick that follows on after
    one missing line (the line cut by the hand-over, lost: seen with QEMU,
    and with pyvmm in two runs of 2026-12-04, not understood yet) is no
    failure, but it is reported and the gap is not counted (None)."""
    if src.p.poll() is not None:
        # The source has exited (pyvmm): its console read to the end first, so
        # its last tick and a line cut at the hand-over are seen (a loaded host
        # can leave the reader behind the exit).
        src.console.join(30)
    if not src.console.ticks:
        raise BenchError(f"{what}: the source printed no tick")
    last_n, last_t = src.console.ticks[-1]
    n, t = dst.wait_tick(-1, TICK_TIMEOUT, f"{what} destination")
    joined = dst.console.joined_tick(src.console)
    if joined is not None and joined[0] == last_n + 1 and n == last_n + 2:
        n, t = joined  # a tick line cut by the hand-over: begun on the source, ended here
    if may_lose_a_line and n == last_n + 2:
        head = [line for line, _t in dst.console.head[:2]]
        print(f"bench: {what}: tick {last_n + 1} was lost by the console in the hand-over (source's unterminated "
              f"rest {src.console.partial!r}, destination's first lines {head!r}); this round's guest gap is not "
              "counted", file=sys.stderr, flush=True)
        return None
    if n != last_n + 1:
        raise BenchError(f"{what}: the destination's first tick is {n}, the source's last was {last_n}")
    return t - last_t


def timing_line(dst):
    """The destination's own account of its part of the pause (PYVMM_MIGRATION_TIMING)."""
    try:
        with open(dst.errpath, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "(no stderr)"
    return next((x.split(": ", 1)[1] for x in lines if x.startswith("pyvmm: incoming timing")), "(not reported)")


def round_pyvmm(k, i, mib, tmp, transport=None):
    sock, inc = os.path.join(tmp, "pyvmm.ctl"), os.path.join(tmp, "pyvmm.in")
    net = ["--net", f"tap=pvbm0,transport={transport}"] if transport else []  # a tap pyvmm creates
    src = dst = None
    try:
        src = Vmm("pyvmm", [sys.executable, "-m", "pyvmm", "run", "-k", k, "-i", i, "-m", f"{mib}M", "-c", "1",
                            "--console", "serial", "-p", workload(mib), "--control", sock, *net], tmp)
        src.wait_tick(2, BOOT_TIMEOUT, f"pyvmm {mib} MiB boot")
        os.environ["PYVMM_MIGRATION_TIMING"] = "1"  # the destination reports its part (timing_line)
        dst = Vmm("pyvmm-incoming", [sys.executable, "-m", "pyvmm", "restore", "--incoming", f"unix:{inc}"], tmp)
        deadline = time.monotonic() + 120
        while not os.path.exists(inc):
            if dst.p.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"pyvmm restore --incoming did not listen: {dst.why()}")
            time.sleep(0.01)
        wall, out, _ = run_tool([sys.executable, "-m", "pyvmm", "migrate", sock, f"unix:{inc}", "--json"],
                                STEP_TIMEOUT, f"pyvmm {mib} MiB migrate")
        rep = json.loads(out)
        try:
            src.p.wait(60)
        except Exception:
            raise BenchError(f"pyvmm migrate exited 0 but the source did not end within 60 s: {src.why()}") from None
        gap = guest_gap(src, dst, f"pyvmm {mib} MiB", may_lose_a_line=True)
        print(f"bench: pyvmm downtime parts (ms): {json.dumps(rep.get('downtime_parts'))}", file=sys.stderr, flush=True)
        print(f"bench: pyvmm destination: {timing_line(dst)}", file=sys.stderr, flush=True)
        print(f"bench: pyvmm phases (ms): {json.dumps(rep.get('phases'))}", file=sys.stderr, flush=True)
        return {"sent": rep["sent_ms"] / 1000, "running": rep["downtime_ms"] / 1000, "total": rep["total_ms"] / 1000,
                "wall": wall, "rounds": rep["rounds"], "bytes": rep["bytes"], "gap": gap}
    finally:
        for v in (src, dst):
            if v:
                v.kill()


def round_qemu(k, i, mib, tmp):
    qs, qd, inc = (os.path.join(tmp, n) for n in ("qemu-src.qmp", "qemu-dst.qmp", "qemu.in"))
    src = dst = None
    qmp = dqmp = None
    try:
        cmd = qemu_cmd(k, i, mib, qs)
        at = cmd.index("-append") + 1
        cmd[at] = f"console=ttyAMA0 {workload(mib)}"
        src = Vmm("qemu", cmd, tmp)
        src.wait_tick(2, BOOT_TIMEOUT, f"QEMU {mib} MiB boot")
        dcmd = qemu_cmd(k, i, mib, qd) + ["-incoming", f"unix:{inc}"]
        dcmd[at] = cmd[at]
        dst = Vmm("qemu-incoming", dcmd, tmp)
        dqmp = Qmp(qd, dst)  # listening once its QMP answers; kept for its RESUME event
        qmp = Qmp(qs, src)
        qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 100 << 30, "downtime-limit": 300})
        t0 = time.monotonic()
        qmp.cmd("migrate", uri=f"unix:{inc}")
        st = migration_completed(qmp, t0, "QEMU migrate")
        wall = time.monotonic() - t0
        ram = st.get("ram", {})
        gap = guest_gap(src, dst, f"QEMU {mib} MiB", may_lose_a_line=True)
        # Pause until running: the source's STOP event to the destination's RESUME (both
        # stamped by the same host's wall clock).
        while dqmp.cmd("query-status").get("status") != "running" and time.monotonic() - t0 < STEP_TIMEOUT:
            time.sleep(0.05)
        dqmp.cmd("query-status")
        stopped, resumed = qmp.event_time("STOP"), dqmp.event_time("RESUME")
        running = resumed - stopped if stopped is not None and resumed is not None else None
        if running is None:
            print("bench: QEMU: no STOP/RESUME event pair seen; pause-until-running not counted", file=sys.stderr,
                  flush=True)
        return {"sent": st["downtime"] / 1000, "running": running, "total": st["total-time"] / 1000, "wall": wall,
                "rounds": ram.get("dirty-sync-count"), "bytes": ram.get("transferred"), "gap": gap}
    finally:
        for q in (qmp, dqmp):
            if q:
                q.close()
        for v in (src, dst):
            if v:
                v.kill()


def report(results, mib, rounds):
    print(f"\n## Live migration: pyvmm vs QEMU ({rounds} rounds each, medians; {mib} MiB guest, 1 vCPU, "
          "unix socket, same test machine)\n")
    print(f"Guest: fills {mib // 4} MiB of tmpfs, then rewrites 1 MiB of a {WINDOW_MIB} MiB file and prints "
          "`tick N` every 0.2 s.\nDowntime = the guest's pause on the source until the source has sent "
          "everything: pyvmm's sent_ms, QEMU's query-migrate downtime (which ends there). Pause until running = "
          "until the destination runs the guest: pyvmm's downtime_ms (RUNNING received), QEMU's source STOP to "
          "destination RESUME event. Total time as each VMM reports it. Guest gap = last tick on the source to "
          "first tick on the destination (a round whose cut tick line was lost is not counted).\n")
    print("| metric | pyvmm | QEMU | pyvmm/QEMU | target |")
    print("|---|---|---|---|---|")
    rows = (("downtime: pause until all sent (reported)", "sent", TARGET_DOWNTIME),
            ("pause until running on the destination", "running", None),
            ("total migration time (reported)", "total", TARGET_TOTAL),
            ("guest gap between ticks", "gap", None), ("wall time of the migrate command / QMP migrate", "wall", None),
            ("rounds (pyvmm) / dirty syncs (QEMU)", "rounds", None), ("bytes sent", "bytes", None))
    for label, key, limit in rows:
        p = median([r[key] for r in results.get("pyvmm", [])])
        q = median([r[key] for r in results.get("qemu", [])])
        ratio = p / q if p is not None and q else None
        unit = " s" if key in ("sent", "running", "total", "gap", "wall") else ""
        show = (lambda x: "n/a" if x is None else (f"{x:.3f}{unit}" if unit else f"{x:,.0f}"))
        verdict = "" if limit is None or ratio is None else f"<= {limit} ({'met' if ratio <= limit else 'MISSED'})"
        print(f"| {label} | {show(p)} | {show(q)} | {'n/a' if ratio is None else f'{ratio:.2f}'} | {verdict} |")


def report_transports(results, transports, label):
    """pyvmm's medians per virtio-net transport, and their ratio to the first's (same run)."""
    first = transports[0]
    print(f"\n## pyvmm live migration by virtio-net transport (ratio to net={first}, same run)\n")
    print("| metric | " + " | ".join(f"net={t}" for t in transports) + " | " +
          " | ".join(f"{t}/{first}" for t in transports[1:]) + " |")
    print("|---|" + "---|" * (2 * len(transports) - 1))
    for what, key in (("downtime: pause until all sent", "sent"), ("pause until running", "running"),
                      ("total migration time", "total")):
        meds = [median([r[key] for r in results[label[("pyvmm", t)]]]) for t in transports]
        ratios = ["n/a" if m is None or not meds[0] else f"{m / meds[0]:.2f}" for m in meds[1:]]
        print(f"| {what} | " + " | ".join("n/a" if m is None else f"{m:.3f} s" for m in meds) + " | "
              + " | ".join(ratios) + " |")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/migration.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("PYVMM_BENCH_RUNS", "3")), metavar="N",
                    help="migrations per VMM (default 3; medians are reported)")
    ap.add_argument("--mem", type=int, default=256, metavar="MIB", help="guest RAM in MiB (default 256)")
    ap.add_argument("--only", choices=("qemu", "pyvmm"), help="measure only this VMM")
    ap.add_argument("--net-transports", default=os.environ.get("PYVMM_BENCH_NET_TRANSPORTS"), metavar="T,T",
                    help="give pyvmm's guest a virtio-net device, once per transport listed (mmio, pci)")
    a = ap.parse_args(argv)
    a.transports = a.net_transports.split(",") if a.net_transports else [None]
    if any(t not in (None, "mmio", "pci") for t in a.transports):
        ap.error("--net-transports takes mmio and pci, comma-separated")
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    if a.mem < 128 or a.mem % 4:
        ap.error("--mem must be at least 128 and a multiple of 4")
    return a


def main(argv):
    args = parse_args(argv)
    k, i = guest_in_test_machine("bench/migration.py", argv, PROG)
    vmms = [args.only] if args.only else ["pyvmm", "qemu"]
    # pyvmm once per transport: "pyvmm" is the first (compared with QEMU), "pyvmm net=T" the others
    runs = [(v, t) for v in vmms for t in (args.transports if v == "pyvmm" else [None])]
    label = {(v, t): v if v != "pyvmm" or t == args.transports[0] else f"pyvmm net={t}" for v, t in runs}
    results = {label[r]: [] for r in runs}

    def body(tmp):
        for n in range(args.rounds):
            for vmm, transport in runs:
                name = label[(vmm, transport)]
                r = (round_pyvmm(k, i, args.mem, tmp, transport) if vmm == "pyvmm"
                     else round_qemu(k, i, args.mem, tmp))
                results[name].append(r)
                show = (lambda x, d=3: "n/a" if x is None else f"{x:.{d}f} s")
                print(f"bench: round {n + 1}/{args.rounds} {name}: downtime (all sent) {show(r['sent'])}, pause until "
                      f"running {show(r['running'])}, total {show(r['total'], 2)}, guest gap {show(r['gap'], 2)}, "
                      f"{r['rounds']} rounds, {(r['bytes'] or 0) / (1 << 20):.1f} MiB", file=sys.stderr, flush=True)
        report(results, args.mem, args.rounds)
        if len(args.transports) > 1 and "pyvmm" in vmms:
            report_transports(results, args.transports, label)

    return guarded(PROG, "pyvmm-bench-migration-", body)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Data-plane benchmark: pyvmm vs QEMU -accel kvm in the same run, same
kernel and initramfs (guests/linux), 1 vCPU, 256 MiB.

  virtio-console throughput: the guest writes PYVMM_BENCH_CONSOLE_MB (4 MiB)
      of 'x' to hvc0 (bench/boot.py's script, longer), pyvmm --console virtio
      vs QEMU virtconsole, each transfer timed by /proc/uptime (10 ms steps).
      Until 2026-12-05 afternoon it wrote 256 KiB (bench/boot.py's size,
      PYVMM_BENCH_VIRTIO_BYTES): 0.16-0.19 s, so one clock step moved a
      transfer's figure by 6%; 4 MiB takes about 3 s.
  Every row gives both VMMs the same virtio devices: pyvmm runs with
  --no-rng except in the boot row, where QEMU has virtio-rng-pci too.
  TCP guest->host and host->guest over a tap, vhost=on: pyvmm ``--net tap=...``
      (vhost-net) vs QEMU ``-netdev tap,vhost=on`` + virtio-net-pci; vhost=off:
      pyvmm ``--net tap=...,vhost=off`` (packets moved by its I/O thread) vs QEMU
      ``-netdev tap,vhost=off``. guests/linux-user/tcp_cat.s in the guest
      sends zeros in 64 KiB writes to a listener here (guest->host,
      PYVMM_BENCH_NET_G2H_MB, default 256 MiB) / reads in 64 KiB reads what a
      server here sends (host->guest, PYVMM_BENCH_NET_H2G_MB, default 512 MiB);
      vhost=off moves PYVMM_BENCH_NET_OFF_MB (8) each way. The listener
      times each transfer with time.monotonic, from accepting the connection
      to the guest's end of it (guest->host) or to the guest's acknowledgement
      of the last byte (host->guest); the guest's own /proc/uptime figures
      (10 ms steps) are logged beside them. Until 2026-12-05 the guest sent with
      ``dd | busybox nc`` (about 1 KiB a write: one small packet each, about
      1 MiB/s for both VMMs) and fetched 8 MiB with busybox wget (0.1-0.2 s).
  vsock stream guest->host and host->guest: pyvmm ``--vsock`` (vhost-vsock) vs
      QEMU vhost-vsock-pci, guests/linux-user/vsock_cat.s in the guest.
  virtio-fs sequential read of a file (256 MiB; PYVMM_BENCH_FS_MB): pyvmm
      ``--fs tag=...,dir=...`` vs QEMU vhost-user-fs-pci with the same virtiofsd
      (Debian's) started the same way, guest ``dd bs=1M`` timed by /proc/uptime.
  boot to init with net, vsock, fs and rng present: spawn to the guest's
      "pyvmm-guest: init" line (after it loaded its modules, so the devices
      are probed), QEMU with virtio-rng-pci beside the same devices; QEMU's
      clock starts before its virtiofsd does (pyvmm starts its own).
      The guest also prints its own clock (/proc/uptime) right after init's
      line: the guest's share of the boot.
  PYVMM_BENCH_HUGE_AB adds a third VMM to each round of the boot and fs rows
      (right after pyvmm in even rounds, right before it in odd ones):
      pyvmm with another PYVMM_HUGE_RAM (how its shared guest RAM gets 2 MiB
      pages, pyvmm/memory.py), shown as A/B lines under those rows: ``1`` (or
      ``0``) runs it with PYVMM_HUGE_RAM=0 (4 KiB pages; the "pyvmm 4k" line),
      ``collapse`` with PYVMM_HUGE_RAM=collapse (a memfd collapsed up front
      instead of the default huge-page tmpfs; the "pyvmm collapse" line).

Noise (a loaded 2-core host moves single runs by 2x): each row boots each
VMM RUNS times (PYVMM_BENCH_RUNS, default 3), pyvmm and QEMU interleaved
(the order swapped every round), and every booted guest of the console, TCP
and vsock rows makes REPEAT transfers (PYVMM_BENCH_REPEAT, default 3), each
timed by the guest; a row's figure is the median of all its transfers.
Prints one table with MB/s (or seconds) per VMM and the ratio pyvmm/QEMU.
A run that fails is reported and left out (the table says how many counted).
PYVMM_BENCH_ONLY picks rows (console,tcp,vsock,fs,boot), PYVMM_BENCH_TCP_VHOST
the TCP variants (on,off). PYVMM_BENCH_NET_TRANSPORT: pyvmm's virtio-net transport,
mmio or pci (``--net ...,transport=``; default pci); a list (pci,mmio) runs the
TCP and boot rows with each, the first in the table's pyvmm column and the others right
after it in every round, shown as A/B lines under those rows.
Run: python3 bench/data_planes.py  (re-runs itself in ci/qemu-aarch64/run on a
non-arm64 host; needs root there for taps; build the guest first).
"""
from __future__ import annotations

import array
import base64
import datetime
import fcntl
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import termios
import threading
import time

from _common import env, guest_in_test_machine
from boot import INIT_MARKER, Watched, local_guest
from boot import pyvmm_cmd as console_pyvmm_cmd, qemu_cmd as console_qemu_cmd
from pyvmm.unix_socket import SocketNotUp, wait_for_socket

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(CHECKOUT, "tests"))
MEM = "256M"
# TCP sizes: 64 MiB took 0.3-0.9 s each way in the test machine on a quiet host (2026-12-05,
# vhost=on, both VMMs), so these keep one transfer near 2 s or longer.
NET_G2H_MB = int(os.environ.get("PYVMM_BENCH_NET_G2H_MB", "256"))
NET_H2G_MB = int(os.environ.get("PYVMM_BENCH_NET_H2G_MB", "512"))
NET_OFF_MB = int(os.environ.get("PYVMM_BENCH_NET_OFF_MB", "8"))  # vhost=off, each way: every 1.5 KB frame crosses Python (0.44 MiB/s g2h, 2026-12-05)
CONSOLE_MB = int(os.environ.get("PYVMM_BENCH_CONSOLE_MB", "4"))  # 1.4-1.6 MB/s for both VMMs (2026-12-05): about 3 s
VSOCK_MB = int(os.environ.get("PYVMM_BENCH_VSOCK_MB", "64"))
FS_MB = int(os.environ.get("PYVMM_BENCH_FS_MB", "256"))
RUNS = int(os.environ.get("PYVMM_BENCH_RUNS", "3"))
REPEAT = int(os.environ.get("PYVMM_BENCH_REPEAT", "3"))  # transfers per booted guest
TCP_VHOST = os.environ.get("PYVMM_BENCH_TCP_VHOST", "on,off").split(",")
# pci by default: like QEMU's virtio-net-pci, and ahead of mmio in the 2026-12-05 A/B runs (docs/benchmarks.md)
NET_TRANSPORTS = os.environ.get("PYVMM_BENCH_NET_TRANSPORT", "pci").split(",")
HOST_IP, GUEST_IP = "10.78.0.1", "10.78.0.2"
VSOCK_PORT = 5123
BUSYBOX = "/bin/busybox"
MAC = "52:54:00:78:00:02"


class RunFailed(Exception):
    pass


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def script(text):
    return "pyvmm.cmd=" + base64.b64encode(text.encode()).decode()


def timed(name, cmd):
    """Shell lines that run ``cmd`` and print 'name=<seconds>' measured by /proc/uptime."""
    return (f"read a _ </proc/uptime; {cmd}; read b _ </proc/uptime\n"
            f"echo \"{name}=$(echo \"$a $b\" | awk '{{print $2 - $1}}')\"\n")


def rounds():
    """(round, VMM) in the order the rows run them: interleaved, the first
    VMM of each round alternating, so a load change hits both alike."""
    for n in range(RUNS):
        for vmm in (("pyvmm", "qemu") if n % 2 == 0 else ("qemu", "pyvmm")):
            yield n, vmm


def serve_each(sock, handle):
    """Accept connections on listening ``sock`` in a thread until it is
    closed: ``handle(conn)`` each, then close it. Returns ``sock``."""
    def run():
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            try:
                handle(c)
            except OSError:
                pass
            finally:
                c.close()
    threading.Thread(target=run, daemon=True).start()
    return sock


def drain(conn):
    """Read from ``conn`` until it closes; the number of bytes read."""
    got = 0
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return got
        got += len(chunk)


class TcpPeer:
    """The host end of the TCP row: on ``g2h_port`` it reads each connection
    to its end, on ``h2g_port`` it sends ``h2g_bytes`` and then waits until
    the guest acknowledged all of them. Each transfer's (direction, bytes,
    seconds from the accept to that end) goes into ``done``; a connection
    that fails (the guest stopped reading, a timeout) adds nothing. Port 0:
    any free one (the ports taken are the attributes)."""

    def __init__(self, g2h_port=5301, h2g_port=5303, host="0.0.0.0"):
        self.h2g_bytes = 0
        self.done = []
        self.socks = []
        try:
            self.socks.append(serve_each(socket.create_server((host, g2h_port)), self._g2h))
            self.socks.append(serve_each(socket.create_server((host, h2g_port)), self._h2g))
        except BaseException:
            self.close()
            raise
        self.g2h_port, self.h2g_port = (s.getsockname()[1] for s in self.socks)

    def _g2h(self, c):
        c.settimeout(120)  # a guest that died leaves no connection stuck (the next one waits behind it)
        t0 = time.monotonic()
        got = 0
        buf = bytearray(1 << 20)
        while True:  # MSG_TRUNC: TCP discards the bytes without copying them (tcp(7)), which
            n = c.recv_into(buf, len(buf), socket.MSG_TRUNC)  # leaves more of the test machine's CPUs to the VMM
            if not n:
                break
            got += n
        self.done.append(("g2h", got, time.monotonic() - t0))

    def _h2g(self, c):
        c.settimeout(120)
        t0 = time.monotonic()
        chunk = memoryview(b"\xa5" * (1 << 20))
        size = left = self.h2g_bytes
        while left:
            n = min(left, len(chunk))
            c.sendall(chunk[:n])
            left -= n
        c.shutdown(socket.SHUT_WR)
        # sendall() returns with up to the socket's send buffer (MiBs) still on its way; the
        # transfer ends when the guest acknowledged every byte (tcp_cat's own FIN came first)
        unacked = array.array("i", [1])
        while True:
            fcntl.ioctl(c.fileno(), termios.TIOCOUTQ, unacked)  # SIOCOUTQ: unsent + unacknowledged
            if unacked[0] == 0:
                break
            if time.monotonic() - t0 > 120:
                raise OSError("host->guest: the guest stopped acknowledging")
            time.sleep(0.001)
        self.done.append(("h2g", size, time.monotonic() - t0))

    def close(self):
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() (Linux)
            except OSError:
                pass
            sock.close()


def vsock_echo(size):
    """Reads each connection to its end, then sends ``size`` bytes back."""
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.bind((socket.VMADDR_CID_ANY, VSOCK_PORT))
    s.listen(4)
    back = b"\x5a" * (1 << 20)

    def answer(c):
        drain(c)
        left = size
        while left:
            n = min(left, len(back))
            c.sendall(back[:n])
            left -= n
    return serve_each(s, answer)


def pyvmm_cmd(k, i, params, devices):
    args = [sys.executable, "-m", "pyvmm", "run", "-k", k, "-i", i, "-m", MEM, "-c", "1", "-p", params]
    for kind, spec in devices:
        if kind == "net":
            args += ["--net", f"tap={spec['tap']},mac={MAC},vhost={spec.get('vhost', 'on')},"
                              f"transport={spec.get('transport', NET_TRANSPORTS[0])}"]
        elif kind == "vsock":
            args += ["--vsock", f"cid={spec['cid']}"]
        elif kind == "fs":
            args += ["--fs", f"tag={spec['tag']},dir={spec['dir']}"]
        # rng: pyvmm has one unless --no-rng
    if not any(kind == "rng" for kind, _ in devices):
        args.append("--no-rng")  # the QEMU it is measured against has none either
    return args


def qemu_cmd(k, i, params, devices, tmp):
    """QEMU's command line and the virtiofsd processes started for it."""
    from pyvmm.vhost.virtiofsd import command, find_binary

    q = shutil.which("qemu-system-aarch64")
    cmd = [q, "-accel", "kvm", "-M", "virt,gic-version=3", "-cpu", "host", "-m", MEM, "-smp", "1",
           "-nographic", "-no-reboot", "-nic", "none", "-monitor", "none", "-serial", "stdio",
           "-kernel", k, "-initrd", i, "-append", f"console=ttyAMA0 {params}"]
    daemons = []
    try:
        for kind, spec in devices:
            if kind == "net":
                cmd += ["-netdev", f"tap,id=n0,ifname={spec['tap']},script=no,downscript=no,"
                                   f"vhost={spec.get('vhost', 'on')}",
                        # romfile=: no option ROM (the test machine has no efi-virtio.rom; -kernel boots need none)
                        "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile="]
            elif kind == "vsock":
                cmd += ["-device", f"vhost-vsock-pci,guest-cid={spec['cid']}"]
            elif kind == "rng":
                cmd += ["-device", "virtio-rng-pci"]
            elif kind == "fs":
                sock = os.path.join(tmp, "qfs.sock")
                if os.path.lexists(sock):  # the last run's: not this daemon's socket
                    os.unlink(sock)
                d = subprocess.Popen(command(find_binary(), sock, spec["dir"], True), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
                daemons.append(d)
                try:
                    wait_for_socket(sock, 30, lambda: None if d.poll() is None else f"exited {d.returncode}")
                except SocketNotUp as e:
                    raise RunFailed(f"virtiofsd for QEMU: {e}") from None
                cmd += ["-object", f"memory-backend-memfd,id=mem,size={MEM},share=on", "-machine",
                        "memory-backend=mem", "-chardev", f"socket,id=fs0,path={sock}",
                        "-device", f"vhost-user-fs-pci,chardev=fs0,tag={spec['tag']}"]
    except BaseException:
        stop(daemons)
        raise
    return cmd, daemons


def stop(daemons):
    for d in daemons:
        if d.poll() is None:
            d.terminate()
        d.wait()


def command_for(vmm, k, i, params, devices, tmp):
    if vmm == "pyvmm":
        return pyvmm_cmd(k, i, params, devices), []
    return qemu_cmd(k, i, params, devices, tmp)


def run_guest(vmm, k, i, guest, devices, tmp, timeout=900, setup=None):
    """The guest's console output; RunFailed when the VMM fails or times out.
    ``vmm``: pyvmm, qemu, or the huge-RAM A/B's pyvmm (PYVMM_BENCH_HUGE_AB)."""
    cmd, daemons = command_for(vmm.split()[0], k, i, "quiet " + script(guest), devices, tmp)
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env_for(vmm), cwd=CHECKOUT)
    try:
        if setup:
            setup()
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"{vmm} did not finish within {timeout} s") from None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        stop(daemons)
    if p.returncode != 0:
        raise RunFailed(f"{vmm} exited {p.returncode}: {err[-600:]!r} {out[-600:]!r}")
    return out.decode(errors="replace")


def values(out, *names):
    """{name: [seconds of each transfer]} from ``timed`` lines named
    name0, name1, ... (REPEAT of them; missing ones are left out)."""
    got = {}
    for n in names:
        got[n] = [float(v) for v in re.findall(rf"^{n}\d+=([0-9.]+)", out, re.M) if float(v) > 0]
    return got


def repeated(*named):
    """Guest lines making each (name, command) transfer REPEAT times in turn."""
    return "".join(timed(f"{name}{j}", cmd) for j in range(REPEAT) for name, cmd in named)


def tap_for(vmm):
    """Both VMMs create their tap (TUNSETIFF); it goes when they exit."""
    return "pvbp0" if vmm == "pyvmm" else "pvbq0"


def net_for(vmm, **options):
    """The ``--net`` spec of a round's VMM (``pyvmm``, ``qemu``, or ``pyvmm T`` for another
    transport's A/B line): its tap, that transport, ``options``."""
    net = {"tap": tap_for(vmm.split()[0]), **options}
    if vmm.split()[-1] in NET_TRANSPORTS[1:]:
        net["transport"] = vmm.split()[-1]
    return net


def configure_tap(name, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(f"/sys/class/net/{name}"):
        if time.monotonic() > deadline:
            raise RunFailed(f"{name} never appeared")
        time.sleep(0.05)
    subprocess.run([BUSYBOX, "ip", "addr", "add", f"{HOST_IP}/24", "dev", name], check=False)
    subprocess.run([BUSYBOX, "ip", "link", "set", name, "up"], check=True)


class Results:
    def __init__(self):
        self.values = {}
        self.failed = {}

    def add(self, vmm, metric, value):
        if value:
            self.values.setdefault((vmm, metric), []).append(value)

    def add_rates(self, vmm, metric, mb, seconds):
        """One MiB/s value per timed transfer of ``mb`` MiB."""
        for t in seconds:
            self.add(vmm, metric, mb / t)

    def attempt(self, vmm, metric, n, fn):
        """Run ``fn()`` (one measurement); a RunFailed is logged and counted."""
        try:
            return fn()
        except RunFailed as e:
            self.failed[vmm, metric] = self.failed.get((vmm, metric), 0) + 1
            log(f"{vmm} {metric} run {n + 1} failed: {e}")
            return None

    def median(self, vmm, metric):
        v = self.values.get((vmm, metric))
        return (statistics.median(v), len(v)) if v else (None, 0)


def bench_console(k, i, r):
    """The guest writes CONSOLE_MB MiB of 'x' to hvc0 (bench/boot.py's
    script), REPEAT times per boot, each timed by the guest: hvc output is
    synchronous (each chunk waits until the device used it), so a write
    ends when its last chunk reached the VMM."""
    metric = "virtio-console throughput"
    n_bytes = CONSOLE_MB << 20
    guest = repeated(("con", f"dd if=/dev/zero bs=4096 count={n_bytes // 4096} 2>/dev/null | tr '\\000' x; echo"))

    def pyvmm_no_rng(*a):  # QEMU's command has only the console: no virtio-rng for pyvmm either
        return console_pyvmm_cmd(*a) + ["--no-rng"]
    for n, vmm in rounds():
        mk = pyvmm_no_rng if vmm == "pyvmm" else console_qemu_cmd

        def one():
            try:
                w = Watched(mk(k, i, "quiet " + script(guest), "virtio"), env()).wait()
            except SystemExit as e:
                raise RunFailed(str(e)) from None
            out = bytes(w.out)
            got = out.count(b"x")
            times = values(out.decode(errors="replace").replace("\r", ""), "con")["con"]
            if got < REPEAT * n_bytes or len(times) < REPEAT:
                raise RunFailed(f"{got} of {REPEAT * n_bytes} bytes, {len(times)} of {REPEAT} timings")
            return times
        times = r.attempt(vmm, metric, n, one) or []
        for t in times:
            r.add(vmm, metric, n_bytes / t)
        log(f"{vmm} console run {n + 1}: {[round(n_bytes / t) for t in times]} B/s")


def transport_rounds():
    """rounds(), with pyvmm on each further PYVMM_BENCH_NET_TRANSPORT right after pyvmm."""
    for n, vmm in rounds():
        yield n, vmm
        if vmm == "pyvmm":
            for t in NET_TRANSPORTS[1:]:
                yield n, f"pyvmm {t}"


def bench_tcp(k, ti, tmp, r):
    """``ti``: the initramfs with /tcp_cat."""
    peer = TcpPeer()
    try:
        for vhost, g2h_mb, h2g_mb in (("on", NET_G2H_MB, NET_H2G_MB), ("off", NET_OFF_MB, NET_OFF_MB)):
            if vhost not in TCP_VHOST:
                continue
            peer.h2g_bytes = h2g_mb << 20
            sizes = {"g2h": g2h_mb << 20, "h2g": h2g_mb << 20}
            guest = (f"ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0\n"
                     f"i=0; until ping -c1 -W1 {HOST_IP} >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 120 ] && break; done\n"
                     + repeated(("g2h", f"/tcp_cat {peer.g2h_port} {g2h_mb}"),
                                ("h2g", f"/tcp_cat {peer.h2g_port} </dev/null >/dev/null")))
            for n, vmm in transport_rounds():
                net = net_for(vmm, vhost=vhost)
                tap = net["tap"]
                peer.done.clear()
                out = r.attempt(vmm, f"tcp vhost={vhost}", n, lambda: run_guest(
                    vmm.split()[0], k, ti, guest, [("net", net)], tmp,
                    setup=lambda: configure_tap(tap)))
                if out is None:
                    continue
                host = {d: [t for dd, got, t in peer.done if dd == d and got == sizes[d]] for d in sizes}
                for d in sizes:
                    r.add_rates(vmm, f"tcp {d} vhost={vhost}", sizes[d] >> 20, host[d])
                short = [(d, got) for d, got, _ in peer.done if got != sizes[d]]
                log(f"{vmm} tcp vhost={vhost} run {n + 1}: MiB/s {({d: [round((sizes[d] >> 20) / t, 1) for t in v] for d, v in host.items()})}"
                    f", seconds by the host {({d: [round(t, 3) for t in v] for d, v in host.items()})}"
                    f", by the guest {values(out, 'g2h', 'h2g')}" + (f", short transfers left out: {short}" if short else ""))
    finally:
        peer.close()


def bench_vsock(k, vi, tmp, r):
    echo = vsock_echo(VSOCK_MB << 20)
    guest = (f"dd if=/dev/zero of=/tmp/z bs=64k count={VSOCK_MB * 16} 2>/dev/null\n"
             + repeated(("both", "/vsock_cat </tmp/z >/dev/null")))
    try:
        for n, vmm in rounds():
            out = r.attempt(vmm, "vsock", n, lambda: run_guest(vmm, k, vi, guest, [("vsock", {"cid": 55})], tmp))
            v = values(out or "", "both")
            r.add_rates(vmm, "vsock both ways", 2 * VSOCK_MB, v["both"])
            log(f"{vmm} vsock run {n + 1}: {v}")
    finally:
        echo.close()


def bench_fs(k, i, tmp, share, r):
    # one read per boot: a second would find the file in the guest's page cache
    guest = ("mkdir -p /mnt; mount -t virtiofs bench /mnt\n"
             + timed("read0", "dd if=/mnt/big of=/dev/null bs=1M 2>/dev/null"))
    for n, vmm in with_huge_ab(rounds()):
        out = r.attempt(vmm, "virtio-fs", n, lambda: run_guest(
            vmm, k, i, guest, [("fs", {"tag": "bench", "dir": share})], tmp))
        v = values(out or "", "read")
        r.add_rates(vmm, "virtio-fs read", FS_MB, v["read"])
        log(f"{vmm} fs run {n + 1}: {v}")


# PYVMM_BENCH_HUGE_AB: the A/B VMM's PYVMM_HUGE_RAM and its name in the table (None: no A/B)
HUGE_AB = {"1": ("0", "pyvmm 4k"), "0": ("0", "pyvmm 4k"),
           "collapse": ("collapse", "pyvmm collapse")}.get(os.environ.get("PYVMM_BENCH_HUGE_AB", ""))


def with_huge_ab(order):
    """``order`` ((round, VMM) pairs) with the PYVMM_BENCH_HUGE_AB VMM next to pyvmm: right after
    it in even rounds, right before it in odd ones (in an A/B with a fixed order the second pyvmm
    boot of a round was the slower one, in either order: 2026-12-06, docs/benchmarks.md)."""
    if HUGE_AB is None:
        return list(order)
    pair = {0: ("pyvmm", HUGE_AB[1]), 1: (HUGE_AB[1], "pyvmm")}
    return [x for n, vmm in order
            for x in ([(n, v) for v in pair[n % 2]] if vmm == "pyvmm" else [(n, vmm)])]


def env_for(vmm):
    """The environment VMM ``vmm`` of a round runs in (the huge-RAM A/B VMM's PYVMM_HUGE_RAM)."""
    e = env()
    if HUGE_AB is not None and vmm == HUGE_AB[1]:
        e["PYVMM_HUGE_RAM"] = HUGE_AB[0]
    return e


def bench_boot(k, i, tmp, share, r):
    metric = "boot to init with net, vsock, fs, rng"
    # pyvmm on each further PYVMM_BENCH_NET_TRANSPORT too, and with PYVMM_BENCH_HUGE_AB's RAM
    order = with_huge_ab(transport_rounds())
    for n, vmm in order:
        devs = [("net", net_for(vmm)), ("vsock", {"cid": 56}), ("fs", {"tag": "bench", "dir": share}), ("rng", {})]

        def one():
            # from before QEMU's virtiofsd starts: pyvmm's time includes starting its own
            t_before = time.monotonic()
            cmd, daemons = command_for(vmm.split()[0], k, i,
                                       "quiet " + script("echo \"uptime=$(cut -d' ' -f1 /proc/uptime)\"\n"),
                                       devs, tmp)
            try:
                w = Watched(cmd, env_for(vmm)).wait()
            except SystemExit as e:
                raise RunFailed(str(e)) from None
            finally:
                stop(daemons)
            if INIT_MARKER not in w.seen:
                raise RunFailed("no init line")
            up = re.search(rb"uptime=([0-9.]+)", w.out)
            if up:
                r.add(vmm, "guest clock at init", float(up.group(1)))
            return w.seen[INIT_MARKER] + (w.t0 - t_before)
        v = r.attempt(vmm, metric, n, one)
        r.add(vmm, metric, v)
        log(f"{vmm} boot run {n + 1}: {v} s, guest clock {r.values.get((vmm, 'guest clock at init'), ['?'])[-1]} s")


def selected(metric, only):
    """Whether the row ``metric`` was measured (PYVMM_BENCH_ONLY, PYVMM_BENCH_TCP_VHOST)."""
    if metric.startswith("tcp "):
        return "tcp" in only and metric.rsplit("=", 1)[1] in TCP_VHOST
    return {"virtio-console throughput": "console", "vsock both ways": "vsock", "virtio-fs read": "fs"}.get(
        metric, "boot") in only


ROWS = (  # metric, unit, target (None: shown for comparison)
    ("virtio-console throughput", "B/s", ">= 1.0"),
    ("tcp g2h vhost=on", "MiB/s", ">= 1.0"),
    ("tcp h2g vhost=on", "MiB/s", ">= 1.0"),
    ("tcp g2h vhost=off", "MiB/s", None),
    ("tcp h2g vhost=off", "MiB/s", None),
    ("vsock both ways", "MiB/s", ">= 1.0"),
    ("virtio-fs read", "MiB/s", ">= 0.9"),
    ("boot to init with net, vsock, fs, rng", "s", "<= 0.5"),
)


def met(ratio, target):
    op, limit = target.split()
    return ratio >= float(limit) if op == ">=" else ratio <= float(limit)


def report(r, only):
    print(f"\n## data planes: pyvmm vs QEMU -accel kvm ({datetime.date.today()}; {RUNS} boots each, interleaved, "
          f"{REPEAT} transfers per boot (console, TCP, vsock), medians of all transfers; "
          f"{MEM} guest, 1 vCPU; console {CONSOLE_MB} MiB to hvc0 (timed by the guest); "
          f"TCP (guests/linux-user/tcp_cat.s, timed by the host) {NET_G2H_MB} MiB g2h and "
          f"{NET_H2G_MB} MiB h2g with vhost=on, {NET_OFF_MB} MiB each way with vhost=off; "
          f"vsock {VSOCK_MB} MiB each way; virtio-fs {FS_MB} MiB; pyvmm's virtio-net on virtio-{NET_TRANSPORTS[0]})\n")
    print("| metric | pyvmm | QEMU | pyvmm/QEMU | target |")
    print("|---|---|---|---|---|")
    for metric, unit, target in ROWS:
        (a, na), (b, nb) = r.median("pyvmm", metric), r.median("qemu", metric)
        if not selected(metric, only):
            continue
        fa = "n/a" if a is None else f"{a:,.2f} {unit}"
        fb = "n/a" if b is None else f"{b:,.2f} {unit}"
        expected = RUNS if metric in ("virtio-fs read", ROWS[-1][0]) else RUNS * REPEAT  # transfers
        if na < expected or nb < expected:
            fa, fb = f"{fa} ({na} of {expected} values)", f"{fb} ({nb} of {expected} values)"
        ratio = a / b if a and b else None
        verdict = "" if target is None else target if ratio is None or met(ratio, target) else f"{target} (not met)"
        print(f"| {metric} | {fa} | {fb} | {'n/a' if ratio is None else f'{ratio:.2f}'} | "
              f"{verdict or 'for comparison'} |")
        if metric.startswith("tcp "):
            for t in NET_TRANSPORTS[1:]:
                (a, na), (b, nb) = r.median("pyvmm", metric), r.median(f"pyvmm {t}", metric)
                (q, _) = r.median("qemu", metric)
                if a and b:
                    vs_qemu = f", {t} vs QEMU {b / q:.2f}" if q else ""
                    print(f"| {metric} (transport {NET_TRANSPORTS[0]} vs {t}) | {a:,.2f} {unit} ({na}) | "
                          f"{b:,.2f} {unit} ({nb}) | {a / b:.2f} | A/B{vs_qemu} |")
        if metric == "virtio-fs read" and HUGE_AB is not None:
            (a, na), (b, nb) = r.median("pyvmm", metric), r.median(HUGE_AB[1], metric)
            (q, _) = r.median("qemu", metric)
            if a and b:
                vs_qemu = f", {HUGE_AB[1]} vs QEMU {b / q:.2f}" if q else ""
                print(f"| {metric} (pyvmm vs {HUGE_AB[1]}) | {a:,.2f} {unit} ({na}) | {b:,.2f} {unit} ({nb}) | "
                      f"{a / b:.2f} | A/B: PYVMM_HUGE_RAM=1 / {HUGE_AB[0]}{vs_qemu} |")
        if metric == ROWS[-1][0]:
            extra = [("guest clock at init", "pyvmm", "qemu", "for comparison")]
            for t in NET_TRANSPORTS[1:]:
                extra += [(metric, "pyvmm", f"pyvmm {t}", f"A/B: net transport {NET_TRANSPORTS[0]} / {t}"),
                          ("guest clock at init", "pyvmm", f"pyvmm {t}", f"A/B: net transport {NET_TRANSPORTS[0]} / {t}")]
            if HUGE_AB is not None:
                note = f"A/B: PYVMM_HUGE_RAM=1 / {HUGE_AB[0]}"
                extra += [(metric, "pyvmm", HUGE_AB[1], note), ("guest clock at init", "pyvmm", HUGE_AB[1], note)]
            for m, x, y, note in extra:
                (a, na), (b, nb) = r.median(x, m), r.median(y, m)
                if a and b:
                    print(f"| {m} ({x} vs {y}) | {a:,.2f} s ({na}) | {b:,.2f} s ({nb}) | {a / b:.2f} | {note} |")


def main():
    k, i = guest_in_test_machine("bench/data_planes.py")
    from support import guestbuild
    from support.guestbuild import initrd_with

    only = os.environ.get("PYVMM_BENCH_ONLY", "console,tcp,vsock,fs,boot").split(",")
    tmp = tempfile.mkdtemp(prefix="pyvmm-bench-")
    r = Results()
    try:
        k, i = local_guest(k, i, tmp)  # both VMMs boot from /tmp, not the checkout's virtio-fs
        with open(guestbuild.build_linux_program("vsock_cat"), "rb") as f:
            vi = initrd_with(i, {"vsock_cat": f.read()}, pathlib.Path(tmp) / "initrd.gz")
        with open(guestbuild.build_linux_program("tcp_cat"), "rb") as f:
            ti = initrd_with(i, {"tcp_cat": f.read()}, pathlib.Path(tmp) / "initrd-tcp.gz")
        share = os.path.join(tmp, "share")
        os.makedirs(share)
        if "fs" in only:  # the file the fs row reads (the boot row only mounts the directory)
            with open(os.path.join(share, "big"), "wb") as f:
                block = os.urandom(1 << 20)
                for _ in range(FS_MB):
                    f.write(block)
        if "console" in only:
            bench_console(k, i, r)
        if "tcp" in only:
            bench_tcp(k, ti, tmp, r)
        if "vsock" in only:
            bench_vsock(k, vi, tmp, r)
        if "fs" in only:
            bench_fs(k, i, tmp, share, r)
        if "boot" in only:
            bench_boot(k, i, tmp, share, r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(r, only)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Data-plane benchmark: pyvmm vs QEMU -accel kvm in the same run, same
kernel and initramfs (guests/linux), 1 vCPU, 256 MiB.

  TCP guest->host and host->guest over a tap: pyvmm ``--net tap=...`` (vhost-net)
      vs QEMU ``-netdev tap,vhost=on`` + virtio-net-pci. The guest sends
      (``dd | nc``) to a listener here / fetches over HTTP from a server here;
      the guest times the transfer with /proc/uptime.
  vsock stream guest->host and host->guest: pyvmm ``--vsock`` (vhost-vsock) vs
      QEMU vhost-vsock-pci, guests/linux-user/vsock_cat.s in the guest.
  virtio-fs sequential read of a file (256 MiB; PYVMM_BENCH_FS_MB): pyvmm
      ``--fs tag=...,dir=...`` vs QEMU vhost-user-fs-pci with the same virtiofsd
      (Debian's) started the same way, guest ``dd bs=1M`` timed by /proc/uptime.
  start to power-off with net, vsock, fs and rng present (the guest's init
      loads its modules and powers off at once).

Prints one table with MB/s (or seconds) per VMM and the ratio pyvmm/QEMU.
Run: python3 bench/data_planes.py  (re-runs itself in ci/qemu-aarch64/run on a
non-arm64 host; needs root there for taps; build the guest first).
"""
from __future__ import annotations

import base64
import http.server
import os
import pathlib
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from _common import env, guest_files

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(CHECKOUT, "tests"))
MEM = "256M"
NET_MB = int(os.environ.get("PYVMM_BENCH_NET_MB", "64"))
VSOCK_MB = int(os.environ.get("PYVMM_BENCH_VSOCK_MB", "64"))
FS_MB = int(os.environ.get("PYVMM_BENCH_FS_MB", "256"))
RUNS = int(os.environ.get("PYVMM_BENCH_RUNS", "3"))
HOST_IP, GUEST_IP = "10.78.0.1", "10.78.0.2"
VSOCK_PORT = 5123
BUSYBOX = "/bin/busybox"


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def script(text):
    return "pyvmm.cmd=" + base64.b64encode(text.encode()).decode()


def timed(name, cmd):
    """Shell lines that run ``cmd`` and print 'name=<seconds>' measured by /proc/uptime."""
    return (f"read a _ </proc/uptime; {cmd}; read b _ </proc/uptime\n"
            f"echo \"{name}=$(echo \"$a $b\" | awk '{{print $2 - $1}}')\"\n")


class Blob(http.server.BaseHTTPRequestHandler):
    size = 0

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        chunk = b"\xa5" * (1 << 20)
        left = self.size
        while left:
            n = min(left, len(chunk))
            self.wfile.write(chunk[:n])
            left -= n

    def log_message(self, *a):
        pass


def sink_tcp(port, size):
    """Takes ``size`` bytes per connection, then closes it (busybox nc may not
    close its side when its input ends)."""
    s = socket.create_server(("0.0.0.0", port))

    def run():
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            left = size
            while left > 0:
                chunk = c.recv(1 << 20)
                if not chunk:
                    break
                left -= len(chunk)
            c.close()
    threading.Thread(target=run, daemon=True).start()
    return s


def vsock_echo(size):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.bind((socket.VMADDR_CID_ANY, VSOCK_PORT))
    s.listen(4)
    back = b"\x5a" * (1 << 20)

    def run():
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            while c.recv(1 << 20):
                pass
            left = size
            while left:
                n = min(left, len(back))
                c.sendall(back[:n])
                left -= n
            c.close()
    threading.Thread(target=run, daemon=True).start()
    return s


def pyvmm_cmd(k, i, params, devices):
    args = [sys.executable, "-m", "pyvmm", "run", "-k", k, "-i", i, "-m", MEM, "-c", "1", "-p", params]
    for kind, spec in devices:
        if kind == "net":
            args += ["--net", f"tap={spec['tap']},mac=52:54:00:78:00:02"]
        elif kind == "vsock":
            args += ["--vsock", f"cid={spec['cid']}"]
        elif kind == "fs":
            args += ["--fs", f"tag={spec['tag']},dir={spec['dir']}"]
    return args


def qemu_cmd(k, i, params, devices, tmp):
    q = shutil.which("qemu-system-aarch64")
    cmd = [q, "-accel", "kvm", "-M", "virt,gic-version=3", "-cpu", "host", "-m", MEM, "-smp", "1",
           "-nographic", "-no-reboot", "-nic", "none", "-monitor", "none", "-serial", "stdio",
           "-kernel", k, "-initrd", i, "-append", f"console=ttyAMA0 {params}"]
    daemons = []
    for kind, spec in devices:
        if kind == "net":
            cmd += ["-netdev", f"tap,id=n0,ifname={spec['tap']},script=no,downscript=no,vhost=on",
                    "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:78:00:02"]
        elif kind == "vsock":
            cmd += ["-device", f"vhost-vsock-pci,guest-cid={spec['cid']}"]
        elif kind == "fs":
            sock = os.path.join(tmp, "qfs.sock")
            from pyvmm.vhost.virtiofsd import command, find_binary
            d = subprocess.Popen(command(find_binary(), sock, spec["dir"], True), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            daemons.append(d)
            while not os.path.exists(sock):
                time.sleep(0.01)
            cmd += ["-object", f"memory-backend-memfd,id=mem,size={MEM},share=on", "-machine", "memory-backend=mem",
                    "-chardev", f"socket,id=fs0,path={sock}",
                    "-device", f"vhost-user-fs-pci,chardev=fs0,tag={spec['tag']}"]
    return cmd, daemons


def run_guest(vmm, k, i, guest, devices, tmp, timeout=900, setup=None):
    params = "quiet " + script(guest)
    daemons = []
    if vmm == "pyvmm":
        cmd = pyvmm_cmd(k, i, params, devices)
    else:
        cmd, daemons = qemu_cmd(k, i, params, devices, tmp)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env(), cwd=CHECKOUT)
    try:
        if setup:
            setup()
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for d in daemons:
            d.terminate()
            d.wait()
    if p.returncode != 0:
        raise SystemExit(f"bench: {vmm} exited {p.returncode}: {err[-800:]!r} {out[-800:]!r}")
    return out.decode(errors="replace"), time.monotonic() - t0


def values(out, *names):
    got = {}
    for n in names:
        m = re.search(rf"^{n}=([0-9.]+)", out, re.M)
        got[n] = float(m.group(1)) if m else None
    return got


def tap_for(vmm):
    """QEMU wants the tap to exist (or be creatable); pyvmm creates it. Both are configured once up."""
    return "pvbp0" if vmm == "pyvmm" else "pvbq0"


def configure_tap(name, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(f"/sys/class/net/{name}"):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {name} never appeared")
        time.sleep(0.05)
    subprocess.run([BUSYBOX, "ip", "addr", "add", f"{HOST_IP}/24", "dev", name], check=False)
    subprocess.run([BUSYBOX, "ip", "link", "set", name, "up"], check=True)


def main():
    if platform.machine() not in ("aarch64", "arm64") or not os.path.exists("/dev/kvm"):
        run = os.path.join(CHECKOUT, "ci", "qemu-aarch64", "run")
        guest_files()
        os.execv(run, [run, "--", "python3", "bench/data_planes.py"])
    k, i = guest_files()
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(CHECKOUT, "pyvmm")], check=False)
    from support import guestbuild
    from support.guestbuild import initrd_with

    tmp = tempfile.mkdtemp(prefix="pyvmm-bench-")
    with open(guestbuild.build_linux_program("vsock_cat"), "rb") as f:
        vi = initrd_with(i, {"vsock_cat": f.read()}, pathlib.Path(tmp) / "initrd.gz")
    results = {}

    # -- TCP ------------------------------------------------------------------------
    Blob.size = NET_MB << 20
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", 5302), Blob)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    sink = sink_tcp(5301, NET_MB << 20)
    net_guest = (f"ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0\n"
                 f"i=0; until ping -c1 -W1 {HOST_IP} >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 120 ] && break; done\n"
                 + timed("g2h", f"dd if=/dev/zero bs=64k count={NET_MB * 16} 2>/dev/null | nc {HOST_IP} 5301")
                 + timed("h2g", f"wget -q -O /dev/null http://{HOST_IP}:5302/"))
    for vmm in ("pyvmm", "qemu"):
        for n in range(RUNS):
            tap = tap_for(vmm)  # both VMMs create it (TUNSETIFF), it goes when they exit
            out, _ = run_guest(vmm, k, i, net_guest, [("net", {"tap": tap})], tmp,
                               setup=lambda tap=tap: configure_tap(tap))
            v = values(out, "g2h", "h2g")
            for d in ("g2h", "h2g"):
                if v[d]:
                    results.setdefault((vmm, f"tcp {d}"), []).append(NET_MB / v[d])
            log(f"{vmm} tcp run {n + 1}: {v}")
    httpd.shutdown()
    sink.close()

    # -- vsock ------------------------------------------------------------------------
    echo = vsock_echo(VSOCK_MB << 20)
    vs_guest = (f"dd if=/dev/zero of=/tmp/z bs=64k count={VSOCK_MB * 16} 2>/dev/null\n"
                + timed("both", "/vsock_cat </tmp/z >/dev/null"))
    for vmm in ("pyvmm", "qemu"):
        for n in range(RUNS):
            out, _ = run_guest(vmm, k, vi, vs_guest, [("vsock", {"cid": 55})], tmp)
            v = values(out, "both")
            if v["both"]:
                results.setdefault((vmm, "vsock both ways"), []).append(2 * VSOCK_MB / v["both"])
            log(f"{vmm} vsock run {n + 1}: {v}")
    echo.close()

    # -- virtio-fs -----------------------------------------------------------------------
    share = os.path.join(tmp, "share")
    os.makedirs(share)
    with open(os.path.join(share, "big"), "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(FS_MB):
            f.write(block)
    fs_guest = ("mkdir -p /mnt; mount -t virtiofs bench /mnt\n"
                + timed("read", "dd if=/mnt/big of=/dev/null bs=1M 2>/dev/null"))
    for vmm in ("pyvmm", "qemu"):
        for n in range(RUNS):
            out, _ = run_guest(vmm, k, i, fs_guest, [("fs", {"tag": "bench", "dir": share})], tmp)
            v = values(out, "read")
            if v["read"]:
                results.setdefault((vmm, "virtio-fs read"), []).append(FS_MB / v["read"])
            log(f"{vmm} fs run {n + 1}: {v}")

    # -- boot with every device ------------------------------------------------------------
    for vmm in ("pyvmm", "qemu"):
        for n in range(RUNS):
            tap = tap_for(vmm)
            devs = [("net", {"tap": tap}), ("vsock", {"cid": 56}), ("fs", {"tag": "bench", "dir": share})]
            out, secs = run_guest(vmm, k, i, "", devs, tmp)  # an empty script: init powers off
            results.setdefault((vmm, "start to power-off with net, vsock, fs, rng"), []).append(secs)
            log(f"{vmm} boot run {n + 1}: {secs:.2f} s")
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n## data planes: pyvmm vs QEMU -accel kvm ({RUNS} runs each, medians; {MEM} guest, 1 vCPU)\n")
    print("| metric | pyvmm | QEMU | pyvmm/QEMU | target |")
    print("|---|---|---|---|---|")
    targets = {"tcp g2h": ">= 1.0", "tcp h2g": ">= 1.0", "vsock both ways": ">= 1.0",
               "virtio-fs read": ">= 0.9", "start to power-off with net, vsock, fs, rng": "<= 0.5"}
    for metric, target in targets.items():
        a = results.get(("pyvmm", metric))
        b = results.get(("qemu", metric))
        unit = " s" if metric.startswith("start") else " MB/s"
        ma = statistics.median(a) if a else None
        mb = statistics.median(b) if b else None
        fa = "n/a" if ma is None else f"{ma:.2f}{unit}"
        fb = "n/a" if mb is None else f"{mb:.2f}{unit}"
        ratio = f"{ma / mb:.2f}" if ma and mb else "n/a"
        print(f"| {metric} | {fa} | {fb} | {ratio} | {target} |")


if __name__ == "__main__":
    main()

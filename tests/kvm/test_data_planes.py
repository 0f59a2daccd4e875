"""The native data planes end to end, with Debian's kernel in a pyvmm guest:
virtio notifies through KVM_IOEVENTFD (served by the I/O thread), virtio-rng,
TCP over a tap with vhost-net, a vsock stream through vhost-vsock, files
through virtio-fs with virtiofsd. Data is checked by SHA-256 in both
directions. Needs root in the test machine (taps, vhost, virtiofsd)."""
import base64
import ctypes
import hashlib
import http.server
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from support.run_support import Running, guest_files, pyvmm
from support.tcp_peer import TcpPeer, serving

pytestmark = pytest.mark.kvm

HOST_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"
VSOCK_PORT = 5123  # guests/linux-user/vsock_cat.s connects there
BUSYBOX = "/bin/busybox"


def script(text: str) -> str:
    return "pyvmm.cmd=" + base64.b64encode(text.encode()).decode()


def boot(*args, cmdline="", initrd=None, timeout=400):
    kernel, default_initrd = guest_files()
    return pyvmm("run", "-k", kernel, "-i", initrd or default_initrd, "-m", "256M", "-p",
                 f"quiet {cmdline}".strip(), *args, timeout=timeout)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def guest_value(out: str, key: str) -> str:
    m = re.search(rf"^{key}=(\S+)", out, re.M)
    assert m, f"no {key}= in the guest's output: {out[-1500:]}"
    return m.group(1)


def test_virtio_notifies_bypass_the_vcpu_thread_and_rng_feeds_the_guest():
    """With virtio-console, queue notifies never exit to pyvmm
    (no QueueNotify write in the MMIO trace) and the I/O thread serves them;
    the guest's hw_random is virtio-rng and gives different bytes each read."""
    r = boot("--console", "virtio", "--debug", cmdline=script(
        'echo "rng=$(cat /sys/class/misc/hw_random/rng_current)"\n'
        'a=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d " \\n")\n'
        'b=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d " \\n")\n'
        'echo "rng_a=$a"; echo "rng_b=$b"\n'))
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    assert r.returncode == 0, (err, out[-2000:])
    assert guest_value(out, "rng").startswith("virtio_rng")
    a, b = guest_value(out, "rng_a"), guest_value(out, "rng_b")
    assert len(a) == 64 and a != b and a != "0" * 64
    io = re.search(r"io_thread (\d+)", err)
    assert io and int(io.group(1)) > 10, err  # console output went through the I/O thread
    assert "+0x50 w" not in err, err  # no QueueNotify among the busiest MMIO registers


def test_no_rng_leaves_the_guest_without_hw_random():
    r = boot("--no-rng", cmdline=script('echo "rng=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)x"\n'))
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, (r.stderr, out[-2000:])
    assert not guest_value(out, "rng").startswith("virtio_rng")


# ---- virtio-net over a tap with vhost-net ------------------------------------------------

def _ip(*args):
    subprocess.run([BUSYBOX, "ip", *args], check=True, capture_output=True)


def _wait_for_interface(name, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(f"/sys/class/net/{name}"):
        assert proc.p.poll() is None, (proc.p.returncode, proc.p.stderr.read())
        assert time.monotonic() < deadline, f"{name} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("vhost", ["on", "off"])
def test_tcp_both_ways_over_a_tap_pyvmm_creates(vhost):
    """pyvmm creates tap pvt0 (and it is gone after exit); the guest sends
    2 MiB to a TCP listener here and fetches 2 MiB over HTTP; both hashes
    match. vhost=on: vhost-net moves the packets; off: pyvmm's I/O thread."""
    peer = TcpPeer(2 << 20, 5201, 5202)
    guest = (f'ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0\n'
             'echo "mac=$(cat /sys/class/net/eth0/address)"\n' + peer.guest_lines(HOST_IP))
    kernel, initrd = guest_files()
    vm = Running(["run", "-k", kernel, "-i", initrd, "-m", "256M", "-p", "quiet " + script(guest),
                  "--net", f"tap=pvt0,mac=52:54:00:77:00:02,vhost={vhost}"])
    try:
        _wait_for_interface("pvt0", vm)
        _ip("addr", "add", f"{HOST_IP}/24", "dev", "pvt0")
        _ip("link", "set", "pvt0", "up")
        err = vm.finish(400)
    finally:
        peer.close()
    out = vm.out.decode(errors="replace")
    assert vm.p.returncode == 0, (err, out[-2000:])
    assert guest_value(out, "mac") == "52:54:00:77:00:02"
    check_tcp(peer, out)
    assert not os.path.exists("/sys/class/net/pvt0")  # the tap pyvmm made is gone


def check_tcp(peer, out):
    """Both transfers of ``peer.guest_lines`` arrived whole."""
    got = peer.received()
    assert len(got) == peer.size, (len(got), out[-1500:])
    assert guest_value(out, "g2h") == sha(got)
    assert guest_value(out, "wget") == "0"
    assert guest_value(out, "h2g") == sha(peer.h2g)


@pytest.mark.parametrize("vhost", ["on", "off"])
def test_tap_deleted_mid_run_stops_the_guest_with_one_line(vhost):
    """`ip link del` of the tap under a running guest: pyvmm stops it with one
    line and exit status 1; the interface and pyvmm are gone."""
    kernel, initrd = guest_files()
    vm = Running(["run", "-k", kernel, "-i", initrd, "-m", "256M", "-p",
                  "quiet " + script("ip link set eth0 up; echo net-is-up; sleep 600\n"),
                  "--net", f"tap=pvd0,vhost={vhost}"])
    vm.wait_for(b"net-is-up", timeout=300)
    _ip("link", "del", "pvd0")
    err = vm.finish(120).decode(errors="replace")
    assert vm.p.returncode == 1, err
    assert err.strip().splitlines() == ["pyvmm: virtio-net tap=pvd0: the tap interface was deleted on the host; "
                                        "the guest was stopped"], err
    assert not os.path.exists("/sys/class/net/pvd0")


def test_net_refusals():
    r = boot("--net", "tap=lo")
    assert r.returncode == 2 and b"lo exists and is not a tap interface" in r.stderr, r.stderr
    assert r.stderr.count(b"\n") == 1


# ---- vsock ------------------------------------------------------------------------------------

def _vsock_initrd(tmp_path):
    from support import guestbuild
    from support.guestbuild import initrd_with

    program = guestbuild.build_linux_program("vsock_cat")
    with open(program, "rb") as f:
        return initrd_with(guest_files()[1], {"vsock_cat": f.read()}, tmp_path / "initrd.gz")


def test_vsock_stream_both_ways(tmp_path):
    """The guest (CID 42) sends 1 MiB over a vsock stream to a listener here
    and receives 1 MiB back; both hashes match. vhost-vsock signals the
    device's edge-triggered irqfd itself: the I/O thread (Python) wakes for
    none of the stream's interrupts (a few wake-ups: virtio-rng at boot)."""
    size = 1 << 20
    back = os.urandom(size)
    lsock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    lsock.bind((socket.VMADDR_CID_ANY, VSOCK_PORT))
    lsock.listen(1)
    got, peer = [], []

    def serve():
        c, addr = lsock.accept()
        peer.append(addr)
        buf = bytearray()
        while True:
            chunk = c.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
        got.append(bytes(buf))
        c.sendall(back)
        c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    guest = (f'dd if=/dev/urandom of=/tmp/a bs=64k count={size >> 16} 2>/dev/null\n'
             'echo "g2h=$(sha256sum /tmp/a | cut -c1-64)"\n'
             '/vsock_cat </tmp/a >/tmp/b; echo "rc=$?"\n'
             'echo "h2g=$(sha256sum /tmp/b | cut -c1-64)"\n')
    try:
        r = boot("--vsock", "cid=42", "--debug", cmdline=script(guest), initrd=_vsock_initrd(tmp_path))
    finally:
        lsock.close()
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    assert r.returncode == 0, (err, out[-2000:])
    io = re.search(r"io_thread (\d+)", err)
    assert io and int(io.group(1)) < 64, err  # 2 MiB in 4 KiB packets: hundreds of interrupts
    t.join(10)
    assert guest_value(out, "rc") == "0"
    assert peer and peer[0][0] == 42
    assert got and guest_value(out, "g2h") == sha(got[0]) and len(got[0]) == size
    assert guest_value(out, "h2g") == sha(back)


def test_vsock_cid_in_use_is_a_usage_error():
    from pyvmm.vhost.vsock import VhostVsock

    other = VhostVsock.open()
    try:
        other.set_guest_cid(77)
        r = boot("--vsock", "cid=77")
    finally:
        other.close()
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [b"pyvmm: error: --vsock cid=77: the CID is in use by another VM "
                                             b"on this host (choose another cid)"]


# ---- virtio-fs ---------------------------------------------------------------------------------

def test_files_both_ways_through_virtio_fs(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    data = os.urandom(3 << 20)
    (share / "in.bin").write_bytes(data)
    guest = ('mkdir -p /mnt && mount -t virtiofs hostshare /mnt; echo "mount=$?"\n'
             'echo "in=$(sha256sum /mnt/in.bin | cut -c1-64)"\n'
             'dd if=/dev/urandom of=/tmp/out bs=64k count=40 2>/dev/null\n'
             'cp /tmp/out /mnt/out.bin; sync\n'
             'echo "out=$(sha256sum /tmp/out | cut -c1-64)"\n'
             'umount /mnt\n')
    r = boot("--fs", f"tag=hostshare,dir={share}", cmdline=script(guest))
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, (r.stderr, out[-2000:])
    assert guest_value(out, "mount") == "0"
    assert guest_value(out, "in") == sha(data)
    assert guest_value(out, "out") == sha((share / "out.bin").read_bytes())
    assert not [d for d in os.listdir("/tmp") if d.startswith("pyvmm-fs-")]  # its socket directory is gone


TMPFS_MAGIC = 0x01021994  # <linux/magic.h>


def _fstatfs_type(fd: int) -> int:
    """f_type of fstatfs(fd): the first field of struct statfs, a long on arm64."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    assert libc.fstatfs(fd, buf) == 0, os.strerror(ctypes.get_errno())
    return ctypes.c_long.from_buffer(buf).value


def _ram_mapping(pid: int, size: int) -> dict:
    """Process ``pid``'s shared mapping of ``size`` bytes (guest RAM) from
    /proc/PID/smaps, its fields in KiB, and "fd": the fd of the file it maps
    (found among the process's fds by device and inode)."""
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur = {"size": hi - lo, "perms": parts[1], "dev": parts[3], "ino": int(parts[4]),
                       "name": " ".join(parts[5:])}
                maps.append(cur)
            elif cur is not None and parts[0].endswith(":") and len(parts) > 1 and parts[1].isdigit():
                cur[parts[0][:-1]] = int(parts[1])
    ram = [m for m in maps if m["size"] == size and m["perms"].endswith("s")]
    assert len(ram) == 1, [(m["name"], m["size"]) for m in maps if m["perms"].endswith("s")]
    m = ram[0]
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if st.st_ino == m["ino"] and f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}" == m["dev"]:
            m["fd"] = f"/proc/{pid}/fd/{fd}"
            return m
    raise AssertionError(f"no fd of pyvmm's maps its RAM ({m['name']})")


def test_virtiofsd_dying_stops_the_guest_with_one_line(tmp_path):
    """(And, while the guest runs: its RAM, shared with virtiofsd, is an
    unnamed file on pyvmm's private huge-page tmpfs, not a memfd, and every
    page of it the guest touched is mapped in pyvmm as part of a 2 MiB page,
    so KVM can map it in 2 MiB stage-2 blocks; pyvmm/memory.py.)"""
    share = tmp_path / "share"
    share.mkdir()
    kernel, initrd = guest_files()
    vm = Running(["run", "-k", kernel, "-i", initrd, "-m", "256M", "-p",
                  "quiet " + script("mkdir -p /mnt; mount -t virtiofs s /mnt; echo mounted; sleep 600\n"),
                  "--fs", f"tag=s,dir={share}"])
    vm.wait_for(b"mounted", timeout=300)
    ram = _ram_mapping(vm.p.pid, 256 << 20)
    assert not os.readlink(ram["fd"]).startswith("/memfd:"), ram["name"]
    fd = os.open(ram["fd"], os.O_RDONLY)
    try:
        assert _fstatfs_type(fd) == TMPFS_MAGIC
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert ram["ShmemPmdMapped"] > 0 and ram["Rss"] == ram["ShmemPmdMapped"], ram
    assert ram["Rss"] < 256 << 10, ram  # allocated as the guest touched it, not up front
    daemons = subprocess.run(["pgrep", "-f", f"shared-dir={share}"], capture_output=True, text=True).stdout.split()
    assert daemons
    os.kill(int(daemons[0]), signal.SIGKILL)
    err = vm.finish(120).decode(errors="replace")
    assert vm.p.returncode == 1, err
    assert "virtio-fs tag=s: the vhost-user daemon closed its socket" in err
    assert err.strip().count("\n") == 0, err


def test_fs_refusals(tmp_path, monkeypatch):
    r = boot("--fs", f"tag=t,dir={tmp_path}/nope")
    assert r.returncode == 2 and b"no such directory" in r.stderr
    monkeypatch.setenv("PYVMM_VIRTIOFSD", "/nonexistent/virtiofsd")
    r = boot("--fs", f"tag=t,dir={tmp_path}")
    assert r.returncode == 1 and b"virtiofsd is not installed" in r.stderr, r.stderr
    assert r.stderr.count(b"\n") == 1


# ---- snapshots ------------------------------------------------------------------------------

def _configure_tap_when_it_appears(name, proc, results):
    """pyvmm (re)creates the tap: give it the host's address and a fixed MAC
    (the guest's ARP cache must stay right across a restore)."""
    try:
        _wait_for_interface(name, proc, 300)
        _ip("link", "set", name, "address", "02:00:00:00:77:01")
        _ip("addr", "add", f"{HOST_IP}/24", "dev", name)
        _ip("link", "set", name, "up")
        results.append("ok")
    except BaseException as e:  # reported by the test
        results.append(repr(e))


def test_net_and_vsock_guest_continues_after_snapshot_kill_restore(tmp_path):
    """A guest fetching a page every 0.3 s over vhost-net is snapshotted, its
    pyvmm stopped, and a new process restores it on a tap it creates again:
    the numbered fetches continue with no gap or repeat, and a vsock round
    trip works after the restore."""
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", 5203), serving(b"pong\n"))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    lsock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    lsock.bind((socket.VMADDR_CID_ANY, VSOCK_PORT))
    lsock.listen(1)
    echoed = []

    def echo():
        c, _ = lsock.accept()
        data = bytearray()
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        c.sendall(bytes(data))
        echoed.append(bytes(data))
        c.close()
    threading.Thread(target=echo, daemon=True).start()
    last = 25
    guest = (f'ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0\n'
             f'i=0; while [ $i -lt {last} ]; do\n'
             f'  if wget -q -T 5 -O /tmp/p http://{HOST_IP}:5203/; then i=$((i+1)); echo "net $i $(cat /tmp/p)"; fi\n'
             '  sleep 0.3\n'
             'done\n'
             'echo vsock-after-restore >/tmp/v; /vsock_cat </tmp/v >/tmp/w; echo "vsock=$?-$(cat /tmp/w)"\n')
    kernel = guest_files()[0]
    initrd = _vsock_initrd(tmp_path)
    sock, snap = tmp_path / "run.sock", tmp_path / "vm.snap"
    configured = []
    vm = Running(["run", "-k", kernel, "-i", initrd, "-m", "256M", "-p", "quiet " + script(guest),
                  "--net", "tap=pvs0,mac=52:54:00:77:00:05", "--vsock", "cid=44", "--control", sock])
    try:
        _configure_tap_when_it_appears("pvs0", vm, configured)
        vm.wait_for(b"net 4 pong", timeout=400)
        r = pyvmm("snapshot", sock, snap, "--stop", timeout=300)
        assert r.returncode == 0, r.stderr
        vm.finish(120)
        first = vm.out.decode(errors="replace")
        assert not os.path.exists("/sys/class/net/pvs0")
        back = Running(["restore", snap])
        _configure_tap_when_it_appears("pvs0", back, configured)
        err = back.finish(400)
    finally:
        httpd.shutdown()
        lsock.close()
    text = back.out.decode(errors="replace")
    assert configured == ["ok", "ok"]
    assert back.p.returncode == 0, (err, text[-2000:])
    nets = [int(n) for n in re.findall(r"(?m)^net (\d+) pong\r?$", first + text)]
    assert nets == list(range(1, last + 1)), nets
    assert "pyvmm-guest: init" not in text  # it continued, it did not boot again
    assert guest_value(text, "vsock") == "0-vsock-after-restore"
    assert echoed == [b"vsock-after-restore\n"]


def test_vsock_connection_is_reset_by_a_restore_and_the_guest_connects_again(tmp_path):
    """A guest holds a vsock connection (its vsock_cat waits for the host's
    answer) when it is snapshotted and its pyvmm stopped. After the restore
    that connection no longer exists on the host: the device posts
    VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, so the guest's read fails at once
    (without the event it would wait for ever) and a new connection works."""
    lsock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    lsock.bind((socket.VMADDR_CID_ANY, VSOCK_PORT))
    lsock.listen(2)
    held, got = threading.Event(), []

    def read_all(c):
        data = bytearray()
        while True:
            chunk = c.recv(65536)
            if not chunk:
                return bytes(data)
            data += chunk

    def serve():
        first, _ = lsock.accept()  # kept open, never answered
        got.append(read_all(first))
        held.set()
        second, _ = lsock.accept()
        data = read_all(second)
        got.append(data)
        second.sendall(data)
        second.close()
        first.close()
    threading.Thread(target=serve, daemon=True).start()
    guest = ('echo held >/tmp/v; /vsock_cat </tmp/v >/tmp/w & pid=$!\n'
             'wait $pid; echo "first=$?"\n'
             'echo again >/tmp/v2; /vsock_cat </tmp/v2 >/tmp/w2; echo "second=$?-$(cat /tmp/w2)"\n')
    kernel = guest_files()[0]
    sock, snap = tmp_path / "run.sock", tmp_path / "vm.snap"
    vm = Running(["run", "-k", kernel, "-i", _vsock_initrd(tmp_path), "-m", "256M", "-p", "quiet " + script(guest),
                  "--vsock", "cid=46", "--control", sock])
    try:
        assert held.wait(400), bytes(vm.out[-2000:])
        r = pyvmm("snapshot", sock, snap, "--stop", timeout=300)
        assert r.returncode == 0, r.stderr
        vm.finish(120)
        back = Running(["restore", snap])
        err = back.finish(300)
    finally:
        lsock.close()
    text = back.out.decode(errors="replace")
    assert back.p.returncode == 0, (err, text[-2000:])
    assert guest_value(text, "first") == "1"  # vsock_cat's read failed (ECONNRESET)
    assert guest_value(text, "second") == "0-again"
    assert got == [b"held\n", b"again\n"]


def test_snapshot_of_a_machine_with_virtio_fs_is_refused_with_one_line(tmp_path):
    kernel, initrd = guest_files()
    sock = tmp_path / "run.sock"
    vm = Running(["run", "-k", kernel, "-i", initrd, "-m", "256M", "-p", "quiet " + script("echo up; sleep 600\n"),
                  "--fs", f"tag=t,dir={tmp_path}", "--control", sock])
    try:
        vm.wait_for(b"up", timeout=300)
        r = pyvmm("snapshot", sock, tmp_path / "vm.snap", timeout=120)
        assert r.returncode == 1, r.stderr  # the VMM refused the request
        assert r.stderr.strip().count(b"\n") == 0 and b"virtio-fs" in r.stderr, r.stderr
        assert not (tmp_path / "vm.snap").exists()
        assert pyvmm("status", sock).returncode == 0  # the guest runs on
    finally:
        vm.p.send_signal(signal.SIGTERM)
        vm.finish(120)

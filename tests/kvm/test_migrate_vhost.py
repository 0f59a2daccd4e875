"""Live migration and incremental snapshots of a guest whose network is
vhost-net (real KVM, Debian's kernel): vhost's writes to guest RAM (the
packets it receives for the guest, its used rings) come from vhost's own
dirty log (pyvmm/vhost/dirty.py). The guest fetches a 1 MiB blob over TCP
from this host again and again and checks each copy's SHA-256 (a receive
buffer the destination got stale shows as a bad copy or a broken fetch).
Failures first (the source's guest and its network must carry on), then
the move on this host:
the destination takes the source's tap as a second queue
(pyvmm/migration/taps.py). Needs root in the test machine (taps, vhost)."""
import hashlib
import http.server
import os
import re
import signal
import threading
import time

import pytest

from support.run_support import Running, guest_files, pyvmm
from test_data_planes import GUEST_IP, HOST_IP, _ip, _wait_for_interface, script
from test_migrate import move, wait_path, wait_running
from test_snapshot_linux import BAD

pytestmark = pytest.mark.kvm

TAP, PORT = "pvm0", 5211
BLOB = os.urandom(1 << 20)


class Server(http.server.BaseHTTPRequestHandler):
    stop = False

    def do_GET(self):
        body = BLOB if self.path == "/blob" else (b"stop" if Server.stop else b"go")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def guest_loop() -> str:
    want = hashlib.sha256(BLOB).hexdigest()
    return script(
        f"ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0\n"
        "i=0\n"
        f'while [ "$(wget -q -T 10 -O - http://{HOST_IP}:{PORT}/ctl)" != stop ]; do\n'
        "  i=$((i + 1))\n"
        f"  if wget -q -T 10 -O /tmp/h http://{HOST_IP}:{PORT}/blob; then\n"
        "    s=$(sha256sum /tmp/h | cut -c1-64)\n"
        f'    if [ "$s" = {want} ]; then echo "net $i ok"; else echo "net $i bad $s"; fi\n'
        '  else echo "net $i fail"; fi\n'
        "  sleep 0.2\n"
        "done\n"
        f"dmesg | grep -E '{BAD}'; echo \"dmesg-check $?\"\n")


def oks(vm: Running):
    return [int(n) for n in re.findall(r"(?m)^net (\d+) ok\r?$", bytes(vm.out).decode(errors="replace"))]


def more_oks(vm: Running, n=2, after=0, timeout=300):
    """Until ``vm``'s guest has fetched ``n`` more good copies than its last (or ``after``)."""
    base = max(oks(vm) + [after])
    deadline = time.monotonic() + timeout
    while max(oks(vm) + [0]) < base + n:
        assert vm.p.poll() is None, (vm.p.returncode, bytes(vm.out[-2000:]), vm.p.stderr.read())
        assert time.monotonic() < deadline, f"no good copy after {base} within {timeout} s: {bytes(vm.out[-1500:])!r}"
        time.sleep(0.2)
    return max(oks(vm))


@pytest.mark.timeout(1200)  # one boot, two snapshots, three migrations under TCG
def test_a_vhost_net_guest_snapshots_incrementally_survives_failed_moves_then_moves(tmp_path):
    Server.stop = False
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    kernel, initrd = guest_files()
    sock = tmp_path / "src.sock"
    src = Running(["run", "-k", kernel, "-i", initrd, "-m", "192M", "-c", "2", "-p", "quiet " + guest_loop(),
                   "--net", f"tap={TAP},mac=52:54:00:77:00:09,vhost=on", "--control", sock])
    dst = None
    try:
        _wait_for_interface(TAP, src)
        _ip("addr", "add", f"{HOST_IP}/24", "dev", TAP)
        _ip("link", "set", TAP, "up")
        more_oks(src, 3, timeout=400)

        # 1. Incremental snapshots of a vhost-net machine (refused before vhost's log was read).
        full, inc = tmp_path / "full.snap", tmp_path / "inc.snap"
        r = pyvmm("snapshot", sock, full, timeout=300)
        assert r.returncode == 0, r.stderr
        more_oks(src)
        r = pyvmm("snapshot", sock, inc, "--since", full, timeout=300)
        assert r.returncode == 0, r.stderr
        assert inc.stat().st_size < full.stat().st_size
        more_oks(src)

        # The tap is multi-queue (a destination on this host shares it), yet another VM cannot take it.
        r = pyvmm("run", "-k", kernel, "-i", initrd, "-m", "64M", "--net", f"tap={TAP}", timeout=120)
        err = r.stderr.decode()
        assert r.returncode == 1 and "in use by another process" in err and err.count("\n") == 1, err

        # 2. A destination that refuses: the source's guest fetches on.
        in1 = tmp_path / "in1.sock"
        bad = Running(["restore", "--incoming", f"unix:{in1}", "--kvm", "/dev/null"])
        wait_path(in1)
        r = pyvmm("migrate", sock, f"unix:{in1}", timeout=300)
        err = r.stderr.decode()
        assert r.returncode == 1 and "refused" in err and err.count("\n") == 1, err
        bad.wait_exit(60)
        more_oks(src)

        # 3. A destination killed mid-copy (1 MiB/s): it had attached a queue to the
        # tap, disabled, so the source's guest kept all its traffic meanwhile.
        in2 = tmp_path / "in2.sock"
        doomed = Running(["restore", "--incoming", f"unix:{in2}"])
        wait_path(in2)
        mig = Running(["migrate", sock, f"unix:{in2}", "--bandwidth", "1"])
        while in2.exists():
            assert mig.p.poll() is None, mig.p.stderr.read()
            time.sleep(0.1)
        time.sleep(5)  # the destination has built its machine (and opened the tap)
        n = more_oks(src, timeout=120)  # during the copy, with the destination's queue on the tap
        assert mig.p.poll() is None, mig.p.stderr.read()
        doomed.p.send_signal(signal.SIGKILL)
        doomed.p.wait(60)
        err = mig.wait_exit(120).decode()
        assert mig.p.returncode == 1 and err.count("\n") == 1 and "failed" in err, err
        more_oks(src, after=n)

        # 4. The move.
        in3, sock2 = tmp_path / "in3.sock", tmp_path / "dst.sock"
        dst = Running(["restore", "--incoming", f"unix:{in3}", "--control", sock2])
        wait_path(in3)
        move(src, sock, f"unix:{in3}", "vhost-net")
        wait_running(sock2)
        more_oks(dst, 3, after=max(oks(src)))
        Server.stop = True
        err = dst.finish(300)
    finally:
        httpd.shutdown()
        for vm in (src, dst):
            if vm is not None and vm.p.poll() is None:
                vm.p.kill()
    before, after = bytes(src.out).decode(errors="replace"), bytes(dst.out).decode(errors="replace")
    assert dst.p.returncode == 0, (err, after[-2000:])
    whole = before + after
    assert " bad " not in whole, whole[-3000:]
    done = [int(n) for n in re.findall(r"(?m)^net (\d+) (?:ok|fail)\r?$", whole)]
    assert done == list(range(1, len(done) + 1)), done  # it continued: no count lost or repeated
    assert "dmesg-check 1" in after and not re.search(BAD, whole), after[-2000:]
    assert "pyvmm-guest: init" not in after  # it continued, it did not boot
    assert not os.path.exists(f"/sys/class/net/{TAP}")  # the tap went with the last pyvmm holding it

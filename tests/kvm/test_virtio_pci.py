"""virtio-net as a virtio-pci function (``--net ...,transport=pci``) with
Debian's kernel in a pyvmm guest: the generic PCIe host bridge is
enumerated, BAR0 assigned by the guest, MSI-X vectors delivered as LPIs by
KVM's vGIC ITS. TCP both ways over a tap, checked by SHA-256, with vhost-net
and with the I/O thread; /proc/interrupts shows the virtio vectors as
ITS-MSI interrupts that fired. Then the machine is snapshotted (--stop),
restored, and moved by ``pyvmm migrate`` over unix: after each, TCP both
ways works again and the queues' LPIs keep arriving (their counts grow).
Needs root in the test machine (taps, vhost)."""
import http.server
import os
import re
import threading

import pytest

from support.run_support import Running, guest_files, pyvmm, wait_ready
from support.tcp_peer import TcpPeer, serving
from test_data_planes import GUEST_IP, HOST_IP, _ip, _wait_for_interface, check_tcp, guest_value, script
from test_migrate import move, wait_path, wait_running

pytestmark = pytest.mark.kvm

GO_PORTS = (5299, 5298)  # the guest's second and third rounds start once these answer


def _irq_counts(out: str):
    """The virtio0 vectors' interrupt counts from the guest's /proc/interrupts lines (ITS-MSI only)."""
    virtio = [line for line in out.splitlines() if line.startswith("irq: ") and "ITS" in line and "virtio0" in line]
    return {re.search(r"virtio0-(\S+)", line).group(1): int(line.split()[2]) for line in virtio}


def _go(port):
    """An HTTP server answering the guest's "may the next round start?"."""
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", port), serving(b"go"))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _tap_up(tap, vm):
    _wait_for_interface(tap, vm)
    _ip("addr", "add", f"{HOST_IP}/24", "dev", tap)
    _ip("link", "set", tap, "up")


@pytest.mark.timeout(1800)  # one boot, a snapshot, a restore and a migration under TCG
@pytest.mark.parametrize("vhost", ["on", "off"])
def test_tcp_over_virtio_net_pci_with_msix_survives_snapshot_restore_and_migration(vhost, tmp_path):
    peers = [TcpPeer(2 << 20, 5211 + 10 * k, 5212 + 10 * k) for k in range(3)]
    # One shell function per round (the kernel command line holds the script: it must stay
    # short): peer.guest_lines with the round's ports, then the MSI interrupt counts.
    size = peers[0].size
    guest = (f'ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0\n'
             'echo "mac=$(cat /sys/class/net/eth0/address)"\n'
             'echo "driver=$(basename $(readlink -f /sys/class/net/eth0/device/../driver))"\n'
             'echo "bus=$(basename $(readlink -f /sys/class/net/eth0/device/..))"\n'
             'r() {\n'
             f' dd if=/dev/urandom of=/tmp/g2h bs=64k count={size >> 16} 2>/dev/null\n'
             ' echo "g2h=$(sha256sum /tmp/g2h | cut -c1-64)"\n'
             f' i=0; until nc {HOST_IP} $1 </tmp/g2h; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.5; done\n'
             f' wget -q -O /tmp/h2g http://{HOST_IP}:$2/blob; echo "wget=$?"\n'
             ' echo "h2g=$(sha256sum /tmp/h2g | cut -c1-64)"\n'
             ' grep -i msi /proc/interrupts | sed "s/^/irq: /"; echo net-done-$3\n'
             '}\n'
             f'w() {{ until wget -q -T 5 -O /dev/null http://{HOST_IP}:$1/go; do sleep 1; done; }}\n'
             f'r 5211 5212 1; w {GO_PORTS[0]}; r 5221 5222 2; w {GO_PORTS[1]}; r 5231 5232 3\n'
             'i=0; while [ $i -lt 900 ]; do sleep 1; i=$((i+1)); done\n')
    assert len(script(guest)) < 1500, len(script(guest))  # with the rest of the command line, under 2048
    kernel, initrd = guest_files()
    tap = f"pvp{vhost}"
    sock, sock2, sock3, inc = (tmp_path / n for n in ("src.sock", "restored.sock", "dst.sock", "in.sock"))
    snap = tmp_path / "s.snap"
    gos = []
    vms = []
    try:
        vm = Running(["run", "-k", kernel, "-i", initrd, "-m", "256M", "-p", "quiet " + script(guest),
                      "--net", f"tap={tap},mac=52:54:00:77:00:12,vhost={vhost},transport=pci", "--control", sock])
        vms.append(vm)
        _tap_up(tap, vm)
        vm.wait_for(b"net-done-1", timeout=600)
        wait_ready(sock)
        # 1. Snapshot (the ITS tables flushed into guest RAM), the VM ended; restored from the file.
        r = pyvmm("snapshot", sock, snap, "--stop", timeout=300)
        assert r.returncode == 0, r.stderr
        err = vm.finish(120)
        assert vm.p.returncode == 0, err
        restored = Running(["restore", snap, "--control", sock2])
        vms.append(restored)
        _tap_up(tap, restored)
        gos.append(_go(GO_PORTS[0]))
        restored.wait_for(b"net-done-2", timeout=600)
        # 2. Live migration over unix to a destination on this host (it shares the tap).
        dst = Running(["restore", "--incoming", f"unix:{inc}", "--control", sock3])
        vms.append(dst)
        wait_path(inc)
        report = move(restored, sock2, f"unix:{inc}", f"virtio-net-pci vhost={vhost}")
        wait_running(sock3)
        gos.append(_go(GO_PORTS[1]))
        dst.wait_for(b"net-done-3", timeout=600)
        from pyvmm.control import call

        call(str(sock3), {"cmd": "stop"})
        err = dst.finish(120)
        assert dst.p.returncode == 0, err
    finally:
        for p in peers:
            p.close()
        for g in gos:
            g.shutdown()
        for v in vms:
            if v.p.poll() is None:
                v.p.kill()
    outs = [bytes(v.out).decode(errors="replace") for v in vms]
    first, after_restore, after_move = outs
    assert guest_value(first, "mac") == "52:54:00:77:00:12"
    assert guest_value(first, "driver") == "virtio-pci", first[-3000:]
    assert guest_value(first, "bus") == "0000:00:00.0", first[-3000:]
    for peer, out in zip(peers, outs):
        check_tcp(peer, out)  # each round's hashes, in the output of the VMM that ran it
    assert "pyvmm-guest: init" not in after_restore + after_move  # it continued, it did not boot again
    # The virtio vectors are ITS-MSI interrupts (LPIs), a vector per queue, and the
    # queues' ones kept firing after the restore and after the move.
    counts = [_irq_counts(out) for out in outs]
    assert "config" in counts[0] and counts[0].get("input.0", 0) > 0, counts
    assert counts[0]["input.0"] < counts[1].get("input.0", 0) < counts[2].get("input.0", 0), counts
    assert report["downtime_ms"] > 0, report
    assert not os.path.exists(f"/sys/class/net/{tap}")


def test_unknown_transport_is_a_usage_error():
    kernel, initrd = guest_files()
    r = pyvmm("run", "-k", kernel, "-i", initrd, "--net", "tap=pvq0,transport=isa")
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().strip().splitlines() == [
        "pyvmm: error: --net tap=pvq0,transport=isa: transport=isa: choose mmio or pci"], r.stderr


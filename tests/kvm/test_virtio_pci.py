"""virtio-net as a virtio-pci function (``--net ...,transport=pci``) with
Debian's kernel in a pyvmm guest: the generic PCIe host bridge is
enumerated, BAR0 assigned by the guest, MSI-X vectors delivered as LPIs by
KVM's vGIC ITS. TCP both ways over a tap, checked by SHA-256, with vhost-net
and with the I/O thread; /proc/interrupts shows the virtio vectors as
ITS-MSI interrupts that fired; snapshot and migrate of that machine are
refused with one line, and the guest runs on. Needs root in the test
machine (taps, vhost)."""
import os
import re

import pytest

from support.run_support import Running, guest_files, pyvmm, wait_ready
from support.tcp_peer import TcpPeer
from test_data_planes import GUEST_IP, HOST_IP, _ip, _wait_for_interface, check_tcp, guest_value, script

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("vhost", ["on", "off"])
def test_tcp_both_ways_over_virtio_net_pci_with_msix(vhost, tmp_path):
    peer = TcpPeer(2 << 20, 5211, 5212)
    guest = (f'ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0\n'
             'echo "mac=$(cat /sys/class/net/eth0/address)"\n'
             'echo "driver=$(basename $(readlink -f /sys/class/net/eth0/device/../driver))"\n'
             'echo "bus=$(basename $(readlink -f /sys/class/net/eth0/device/..))"\n'
             + peer.guest_lines(HOST_IP) +
             'grep -i msi /proc/interrupts | sed "s/^/irq: /"\n'
             'echo net-done\n'
             'i=0; while [ $i -lt 600 ]; do sleep 1; i=$((i+1)); done\n')
    kernel, initrd = guest_files()
    tap = f"pvp{vhost}"
    sock = tmp_path / "ctl.sock"
    vm = Running(["run", "-k", kernel, "-i", initrd, "-m", "256M", "-p", "quiet " + script(guest),
                  "--net", f"tap={tap},mac=52:54:00:77:00:12,vhost={vhost},transport=pci", "--control", sock])
    try:
        _wait_for_interface(tap, vm)
        _ip("addr", "add", f"{HOST_IP}/24", "dev", tap)
        _ip("link", "set", tap, "up")
        vm.wait_for(b"net-done", timeout=600)
        wait_ready(sock)
        snap = pyvmm("snapshot", sock, tmp_path / "s.snap", timeout=300)
        mig = pyvmm("migrate", sock, f"unix:{tmp_path / 'nobody.sock'}", timeout=300)
        from pyvmm.control import call

        status = call(str(sock), {"cmd": "status"})
        call(str(sock), {"cmd": "stop"})
        err = vm.finish(120)
    finally:
        peer.close()
        if vm.p.poll() is None:
            vm.p.kill()
    out = vm.out.decode(errors="replace")
    assert vm.p.returncode == 0, (err, out[-3000:])
    assert guest_value(out, "mac") == "52:54:00:77:00:12"
    assert guest_value(out, "driver") == "virtio-pci", out[-3000:]
    assert guest_value(out, "bus") == "0000:00:00.0", out[-3000:]
    check_tcp(peer, out)
    # The virtio vectors are ITS-MSI interrupts (LPIs), and the queues' ones fired.
    irqs = [line for line in out.splitlines() if line.startswith("irq: ")]
    virtio = [line for line in irqs if "ITS" in line and "virtio0" in line]
    assert virtio, out[-3000:]
    counts = {re.search(r"virtio0-(\S+)", line).group(1): int(line.split()[2]) for line in virtio}
    assert "config" in counts and counts.get("input.0", 0) > 0, counts  # a vector per queue, and they fired
    # Refused, one line each, before anything was paused or written: the guest ran on.
    serr = snap.stderr.decode()
    assert snap.returncode != 0 and "cannot snapshot this machine" in serr and "PCI" in serr, serr
    assert serr.count("\n") == 1, serr
    assert not (tmp_path / "s.snap").exists()
    merr = mig.stderr.decode()
    assert mig.returncode == 1 and "cannot migrate this machine" in merr and "PCI" in merr, merr
    assert merr.count("\n") == 1, merr
    assert status.get("state") == "running", status
    assert not os.path.exists(f"/sys/class/net/{tap}")


def test_unknown_transport_is_a_usage_error():
    kernel, initrd = guest_files()
    r = pyvmm("run", "-k", kernel, "-i", initrd, "--net", "tap=pvq0,transport=isa")
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().strip().splitlines() == [
        "pyvmm: error: --net tap=pvq0,transport=isa: transport=isa: choose mmio or pci"], r.stderr


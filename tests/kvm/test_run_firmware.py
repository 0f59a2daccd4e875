"""``pyvmm run --firmware``: exit statuses, signals, the UART and --dump-dtb with
tiny bare-metal payloads on real KVM (fast: no Linux boot)."""
import shutil
import signal
import subprocess

import pytest

from support.run_support import (Running, PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, B_SELF, ldp_x1_x2_x0, mov64, print_then,
                        program, pyvmm)

pytestmark = pytest.mark.kvm


@pytest.fixture
def fw(tmp_path):
    def make(data: bytes, name="fw.bin"):
        p = tmp_path / name
        p.write_bytes(data)
        return p
    return make


def test_poweroff_is_status_0_and_uart_output_arrives(fw):
    r = pyvmm("run", "--firmware", fw(print_then(b"hello pl011\n", PSCI_SYSTEM_OFF)), "-m", "64M")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello pl011\n"


def test_reset_with_on_reboot_exit_is_status_3(fw):
    r = pyvmm("run", "--firmware", fw(print_then(b"R", PSCI_SYSTEM_RESET)), "-m", "64M", "--on-reboot", "exit")
    assert r.returncode == 3, r.stderr
    assert b"reset" in r.stderr


def test_unemulatable_access_is_a_crash_status_4(fw):
    # ldp from the UART: a data abort without a valid syndrome, KVM cannot emulate it
    r = pyvmm("run", "--firmware", fw(program(mov64(0, 0x0900_0000), ldp_x1_x2_x0(), B_SELF)), "-m", "64M")
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert len(r.stderr.decode().strip().splitlines()) == 1


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_stop_a_spinning_guest_cleanly(fw, sig, status):
    r = Running(["run", "--firmware", fw(print_then(b"spinning\n", None)), "-m", "64M", "-c", "2", "--debug"])
    r.wait_for(b"spinning\n")
    took, err = r.stop(sig)
    assert r.p.returncode == status, err
    assert took < 20  # generous: the test machine may be busy
    assert b"stopped by SIG" in err


def test_restart_on_reset_reboots_until_stopped(fw):
    r = Running(["run", "--firmware", fw(print_then(b"boot\n", PSCI_SYSTEM_RESET)), "-m", "64M", "--debug"])
    r.wait_for(b"boot\n", count=3)
    took, err = r.stop(signal.SIGTERM)
    assert r.p.returncode == 143, (err, bytes(r.out[-200:]))
    assert b"resets " in err and b"resets 0," not in err


def test_dump_dtb_passes_dtc(fw, tmp_path):
    dtb = tmp_path / "m.dtb"
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    r = pyvmm("run", "--firmware", fw(print_then(b"", PSCI_SYSTEM_OFF)), "-m", "128M", "-c", "2",
              "--dump-dtb", dtb, "--disk", f"{disk},ro", "--console", "virtio", "-p", "quiet")
    assert r.returncode == 0, r.stderr
    dtc = shutil.which("dtc")
    assert dtc, "dtc missing in the test machine (device-tree-compiler)"
    d = subprocess.run([dtc, "-I", "dtb", "-O", "dts", str(dtb)], capture_output=True, check=True)
    dts = d.stdout.decode()
    assert b"ERROR" not in d.stderr
    for needle in ("cpu@0 {", "cpu@1 {", 'compatible = "arm,gic-v3"', "virtio_mmio@a000000", "virtio_mmio@a000200",
                   'bootargs = "console=hvc0 quiet"', "reg = <0x00 0x40000000 0x00 0x8000000>", "pl011@9000000"):
        assert needle in dts, needle


def test_sve_max_vl_not_offered_is_refused_else_cut(fw):
    from pyvmm.arm64 import regs
    from pyvmm.kvm import open_kvm

    with open_kvm() as kvm:
        vm = kvm.create_vm()
        v = vm.create_vcpu(0)
        v.arm_vcpu_init([4])  # SVE
        offered = regs.vls_decode(v.get_one_reg(regs.SVE_VLS))
        vm.close()
    missing = [q for q in range(1, 17) if q not in offered]
    bits = 128 * (missing[0] if missing else 16)
    r = pyvmm("run", "--firmware", fw(print_then(b"", PSCI_SYSTEM_OFF)), "-m", "64M", "--sve-max-vl", bits)
    if missing:
        assert r.returncode == 1, r.stderr  # a host limit, not a usage error
        line = r.stderr.decode().strip()
        assert "not offered by this host" in line and len(line.splitlines()) == 1
    else:  # this host offers every length up to 2048: the cut must still work
        assert r.returncode == 0, r.stderr

"""``pyvmm run`` booting Debian's arm64 kernel with the project's initramfs
(guests/linux) on real KVM: vCPUs, command line, initrd, shell input,
virtio-blk, virtio-console, --sve-max-vl. Each test is one guest boot."""
import base64
import subprocess

import pytest

from support.run_support import Running, guest_files, pyvmm

pytestmark = pytest.mark.kvm


def script(text: str) -> str:
    return "pyvmm.cmd=" + base64.b64encode(text.encode()).decode()


def boot(*args, cmdline="", input=None, timeout=300):
    kernel, initrd = guest_files()
    return pyvmm("run", "-k", kernel, "-i", initrd, "-m", "256M", "-p", f"quiet {cmdline}".strip(), *args,
                 input=input, timeout=timeout)


def test_one_vcpu_boots_to_init_with_cmdline_and_initrd():
    r = boot("-c", "1", cmdline="pyvmm.marker=x1y2z3 " + script(
        'echo "cpus=$(grep -c ^processor /proc/cpuinfo)"; cat /proc/cmdline; ls /lib/modules'))
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, (r.stderr, out[-2000:])
    assert "pyvmm-guest: init" in out  # /init of the initrd ran
    assert "cpus=1" in out
    assert "pyvmm.marker=x1y2z3" in out  # the command line arrived
    assert "x1-x3 nonzero" not in out  # Linux checks the boot protocol (pr_err, shown with quiet)
    assert "virtio_mmio.ko" in out


def test_128_mib_guest_boots_without_cma_0():
    # Debian's kernel reserves 64 MiB for CMA where it finds that much contiguous free RAM; with
    # initrd and DTB placed as QEMU places them (pyvmm/boot/layout.py) it finds none in a
    # 128 MiB guest, which boots and has memory left for userspace (issue 13, item 6).
    kernel, initrd = guest_files()
    r = pyvmm("run", "-k", kernel, "-i", initrd, "-m", "128M", "-p", "quiet " + script(
        'cat /proc/cmdline\n'
        'head -c 33554432 /dev/zero >/tmp/fill && echo "filled $(du -m /tmp/fill | cut -f1) MiB"\n'
        'grep -E "^(MemTotal|MemAvailable|CmaTotal):" /proc/meminfo'), timeout=300)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, (r.stderr, out[-3000:])
    assert "pyvmm-guest: init" in out
    assert "filled 32 MiB" in out, out[-3000:]
    assert "Out of memory" not in out and "oom-kill" not in out


def test_two_vcpus_and_sve_max_vl_256():
    r = boot("-c", "2", "--sve-max-vl", "256", cmdline=script(
        'echo "cpus=$(grep -c ^processor /proc/cpuinfo) online=$(cat /sys/devices/system/cpu/online)"\n'
        'echo -1 >/proc/sys/abi/sve_default_vector_length\n'
        'echo "sve_max_bytes=$(cat /proc/sys/abi/sve_default_vector_length)"'))
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, (r.stderr, out[-2000:])
    assert "cpus=2 online=0-1" in out
    assert "sve_max_bytes=32" in out  # 256 bits


def test_typed_input_reaches_the_shell():
    kernel, initrd = guest_files()
    r = Running(["run", "-k", kernel, "-i", initrd, "-m", "256M", "-c", "1", "-p", "quiet pyvmm.shell=1"],
                stdin=subprocess.PIPE)
    r.wait_for(b"# ", timeout=240)  # the shell's prompt: type like a user would
    r.type(b"echo typed-$((6*7))\n")
    r.wait_for(b"typed-42", timeout=60)
    r.type(b"poweroff -f\n")
    err = r.wait_exit(120)
    assert r.p.returncode == 0, err


def test_virtio_blk_write_reaches_the_host_file_with_virtio_console(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    ro = tmp_path / "ro.img"
    ro.write_bytes(b"read-only-disk!\n" + bytes((1 << 20) - 16))
    r = boot("-c", "1", "--console", "virtio", "--disk", disk, "--disk", f"{ro},ro", cmdline=script(
        "echo pyvmm-disk-test-0123456789 | dd of=/dev/vda bs=512 seek=3 conv=notrunc,fsync 2>/dev/null\n"
        "sync\n"
        "echo \"vdb=$(head -c 15 /dev/vdb) ro=$(cat /sys/block/vdb/ro)\"\n"
        "echo x | dd of=/dev/vdb 2>/dev/null && echo vdb-write-ok || echo vdb-write-refused\n"))
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, (r.stderr, out[-2000:])
    assert "pyvmm-guest: init" in out  # arrived through virtio-console (hvc0)
    assert "vdb=read-only-disk! ro=1" in out
    assert "vdb-write-refused" in out
    data = disk.read_bytes()
    assert data[3 * 512:3 * 512 + 27] == b"pyvmm-disk-test-0123456789\n"
    assert ro.read_bytes()[:16] == b"read-only-disk!\n"

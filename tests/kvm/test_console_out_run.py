"""``pyvmm run --console-out`` on real KVM with a tiny bare-metal payload
that prints through the PL011 and powers off."""
import pytest

from support.run_support import PSCI_SYSTEM_OFF, print_then, pyvmm

pytestmark = pytest.mark.kvm


def test_console_to_a_log_file(tmp_path):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(print_then(b"to the log\n", PSCI_SYSTEM_OFF))
    log = tmp_path / "console.log"
    r = pyvmm("run", "--firmware", fw, "-m", "64M", "--console-out", f"file:{log}")
    assert r.returncode == 0, r.stderr
    assert log.read_bytes() == b"to the log\n"
    assert r.stdout == b""
    assert r.stderr.decode() == f"pyvmm: console on file {log}\n"


def test_console_on_a_pty_nobody_reads(tmp_path):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(print_then(b"x" * 200, PSCI_SYSTEM_OFF))
    r = pyvmm("run", "--firmware", fw, "-m", "64M", "--console-out", "pty")
    assert r.returncode == 0, r.stderr  # the guest was not stalled by an unread console
    assert r.stderr.decode().startswith("pyvmm: console on pty /dev/pts/")

"""Live migration of a Linux guest running SME code: two sme_hostloop
instances (guests/linux-user/sme_hostloop.s) keep ZA, ZT0, streaming Z0 and
TPIDR2 live and check them, round after round, while the guest is migrated
between two pyvmm processes; every round before and after the move passes
and the rounds continue with no gap. The programs are in streaming mode
with ZA on most of the time, so the final pause catches a vCPU mid-computation
with that state (which one the pause catches is not chosen by the test).

Marked sme_kernel: needs the project's kernel (see test_sme_abi.py)."""
import base64
import re
import signal

import pytest

from support.guestbuild import initrd_with
from support.run_support import Running, guest_files, pyvmm
from support.sme_guest import require_sme

pytestmark = [pytest.mark.kvm, pytest.mark.sme_kernel]


@pytest.fixture(scope="module")
def host(request):
    from pyvmm.kvm import open_kvm

    with open_kvm() as kvm:
        return require_sme(request, kvm)


def test_sme_program_continues_after_live_migration(host, tmp_path):
    from support import guestbuild
    from test_migrate import wait_path

    program = guestbuild.build_linux_program("sme_hostloop")
    with open(program, "rb") as f:
        initrd = initrd_with(guest_files()[1], {"sme_hostloop": f.read()}, tmp_path / "initrd.gz")
    # Rounds go on until the test stops the destination: a fixed count ended the guest (and
    # removed the source's control socket) before the migration started (seen on the SME kernel).
    script = ('i=0\n'
              'while true; do i=$((i + 1))\n'
              '  /sme_hostloop & a=$!; /sme_hostloop; b=$?; wait $a; echo "round $i: $? $b"\n'
              'done\n')
    cmd = "pyvmm.cmd=" + base64.b64encode(script.encode()).decode()
    sock = tmp_path / "vm.sock"
    src = Running(["run", "-k", guest_files()[0], "-i", initrd, "-m", "192M", "-c", 2, "-p", f"quiet {cmd}",
                   "--sme-max-vl", max(host.vls_bits), "--control", sock])
    src.wait_for(b"round 2:", timeout=400)
    inc = tmp_path / "in.sock"
    dst = Running(["restore", "--incoming", f"unix:{inc}"])
    wait_path(inc)
    r = pyvmm("migrate", sock, f"unix:{inc}", "--json", timeout=600)
    assert r.returncode == 0, (r.stdout, r.stderr)
    print(f"SME migration: {r.stdout.decode().strip()}")
    src.wait_exit(120)
    assert src.p.returncode == 0
    before = bytes(src.out).decode(errors="replace")
    last_before = max(int(n) for n in re.findall(r"round (\d+):", before))
    try:
        # round N+5 begun: the line of round N+4 is whole (stopping on "round N+4:" itself
        # could cut its results off, which made this test flaky)
        dst.wait_for(f"round {last_before + 5}:".encode(), timeout=240)
    finally:
        dst.stop(signal.SIGTERM)
    after = bytes(dst.out).decode(errors="replace")
    rounds = [(int(n), res) for n, res in re.findall(r"round (\d+): (\d+ \d+)", before + after)]
    assert [n for n, _ in rounds] == list(range(1, len(rounds) + 1)), rounds
    assert len(rounds) >= last_before + 4, rounds
    assert all(res == "0 0" for _, res in rounds), rounds
    assert re.search(r"round \d+:", after), "no round finished after the move"

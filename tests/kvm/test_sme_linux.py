"""``pyvmm run --sme-max-vl BITS [--no-sve]`` boots Debian's arm64 kernel
(guests/linux) with SME: the guest kernel sees SME and its largest
streaming vector length is the one asked for.

Marked sme_kernel: needs the project's kernel (see test_sme_abi.py)."""
import base64
import re

import pytest

from support.guestbuild import initrd_with

from support.run_support import guest_files, pyvmm
from support.sme_guest import require_sme

pytestmark = [pytest.mark.kvm, pytest.mark.sme_kernel]

PROBE = ('echo "hwcaps: $(grep -m1 ^Features /proc/cpuinfo)"\n'
         'echo -1 >/proc/sys/abi/sme_default_vector_length\n'
         'echo "sme_max_bytes=$(cat /proc/sys/abi/sme_default_vector_length)"\n'
         'echo "sve_abi=$(ls /proc/sys/abi | grep -c sve_default)"\n')


@pytest.fixture(scope="module")
def host(request):
    from pyvmm.kvm import open_kvm

    with open_kvm() as kvm:
        return require_sme(request, kvm)


@pytest.mark.parametrize("no_sve", [False, True], ids=["sve+sme", "sme-only"])
def test_linux_guest_sees_sme_at_the_chosen_length(host, no_sve):
    svl = 512 if 4 in host.vqs else max(host.vls_bits)
    kernel, initrd = guest_files()
    cmd = "pyvmm.cmd=" + base64.b64encode(PROBE.encode()).decode()
    r = pyvmm("run", "-k", kernel, "-i", initrd, "-m", "256M", "-p", f"quiet {cmd}",
              "--sme-max-vl", svl, *(["--no-sve"] if no_sve else []), timeout=400)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, (r.stderr, out[-2000:])
    features = next(ln for ln in out.splitlines() if ln.startswith("hwcaps:")).split()
    assert "sme" in features
    assert f"sme_max_bytes={svl // 8}" in out
    assert ("sve" in features) == (not no_sve)


def test_sme_program_built_from_source_runs_in_a_linux_guest(host, tmp_path):
    """guests/linux-user/sme_hostloop.s, assembled and linked by Debian's
    binutils, runs twice at once in a 2-vCPU Linux guest with SME: each keeps
    ZA, ZT0, streaming Z0 and TPIDR2 live across sched_yield() and
    preemption and checks them 2000 times."""
    from support import guestbuild

    program = guestbuild.build_linux_program("sme_hostloop")
    with open(program, "rb") as f:
        initrd = initrd_with(guest_files()[1], {"sme_hostloop": f.read()}, tmp_path / "initrd.gz")
    script = ('grep -q " sme2" /proc/cpuinfo && echo "cpuinfo: sme2"\n'
              '/sme_hostloop & a=$!; /sme_hostloop; b=$?; wait $a; echo "sme_hostloop: $? $b"\n')
    cmd = "pyvmm.cmd=" + base64.b64encode(script.encode()).decode()
    kernel = guest_files()[0]
    r = pyvmm("run", "-k", kernel, "-i", initrd, "-m", "256M", "-c", 2, "-p", f"quiet {cmd}",
              "--sme-max-vl", max(host.vls_bits), timeout=600)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, (r.stderr, out[-2000:])
    assert "cpuinfo: sme2" in out
    assert "sme_hostloop: 0 0" in out, out[-2000:]


def test_sme_program_continues_after_snapshot_kill_restore(host, tmp_path):
    """Two sme_hostloop instances run rounds in a 2-vCPU Linux guest with SME.
    A live snapshot is taken while a vCPU has ZA on (SVCR.ZA = 1) with the
    program's pattern in ZA row 0; pyvmm is killed; a new process restores
    it; every round before and after passes, and the rounds continue from
    where they stopped."""
    import signal
    from pyvmm.arm64 import regs
    from pyvmm.control import call
    from pyvmm.snapshot import format as fmt
    from pyvmm.snapshot import manifest
    from support import guestbuild
    from support.run_support import Running

    program = guestbuild.build_linux_program("sme_hostloop")
    with open(program, "rb") as f:
        initrd = initrd_with(guest_files()[1], {"sme_hostloop": f.read()}, tmp_path / "initrd.gz")
    # rounds of both programs at once for 120 s of guest time (the guest's clock
    # does not see the gap: --clock hide), then a last round
    script = ('end=$(($(date +%s) + 120)); i=0\n'
              'while [ $(date +%s) -lt $end ] || [ $i = 0 ]; do i=$((i + 1))\n'
              '  /sme_hostloop & a=$!; /sme_hostloop; b=$?; wait $a; echo "round $i: $? $b"\n'
              'done\necho "sme-rounds-done $i"\n')
    cmd = "pyvmm.cmd=" + base64.b64encode(script.encode()).decode()
    sock = tmp_path / "vm.sock"
    svl = max(host.vls_bits)
    vm = Running(["run", "-k", guest_files()[0], "-i", initrd, "-m", "256M", "-c", 2, "-p", f"quiet {cmd}",
                  "--sme-max-vl", svl, "--control", sock])
    vm.wait_for(b"round 1:", timeout=400)
    pattern = bytes((13 * k + 7) & 0xFF for k in range(svl // 8))

    def task_svl(st) -> int:
        """The running task's streaming VL in bytes: the guest kernel sets
        SMCR_EL1.LEN per task (its default is not the maximum)."""
        length = int.from_bytes(st.register_map()[regs.sysreg_named("SMCR_EL1")], "little") & 0xF
        want = 16 * (length + 1)
        return 1 << (want.bit_length() - 1)  # SVLs are powers of two: the largest not above it
    chosen = None
    seen = []
    for attempt in range(20):
        assert vm.p.poll() is None, (f"the guest ended before a snapshot caught ZA on: {seen}",
                                     bytes(vm.out[-3000:]))
        path = tmp_path / f"vm{attempt}.snap"
        call(str(sock), {"cmd": "snapshot", "path": str(path)})
        states = manifest.vcpu_states(fmt.load(str(path)))
        seen.append([(st.svcr, bytes(st.register_map().get(regs.sme_za_row(0), b""))[:8].hex()) for st in states])
        if any(st.svcr & 2 and bytes(st.register_map()[regs.sme_za_row(0)])[:task_svl(st)] ==
               pattern[:task_svl(st)] for st in states):
            chosen = path
            break
        path.unlink()
    assert chosen is not None, f"no snapshot caught ZA on with the program's pattern in row 0: {seen}"
    vm.p.send_signal(signal.SIGKILL)
    vm.p.wait(60)
    before = bytes(vm.out).decode(errors="replace")

    back = Running(["restore", chosen])
    err = back.finish(400)
    after = bytes(back.out).decode(errors="replace")
    assert back.p.returncode == 0, (err, after[-2000:])
    rounds = [(int(n), r) for n, r in re.findall(r"round (\d+): (\d+ \d+)", after)]
    assert rounds and all(r == "0 0" for _, r in rounds), after[-2000:]
    assert "sme-rounds-done" in after
    done_before = [int(n) for n in re.findall(r"round (\d+):", before)]
    # the restored guest goes on from the snapshot: its first round is one the killed VM
    # had not finished when the snapshot was taken (the output after it was lost with it)
    assert 2 <= rounds[0][0] <= done_before[-1] + 1  # round 1 was printed before any snapshot
    assert [n for n, _ in rounds] == list(range(rounds[0][0], rounds[-1][0] + 1))

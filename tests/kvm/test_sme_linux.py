"""``pyvmm run --sme-max-vl BITS [--no-sve]`` boots Debian's arm64 kernel
(guests/linux) with SME: the guest kernel sees SME and its largest
streaming vector length is the one asked for.

Marked sme_kernel: needs the project's kernel (see test_sme_abi.py)."""
import base64

import pytest

from test_run_support import guest_files, pyvmm
from test_sme_abi import require_sme

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


def _initrd_with(initrd: str, files: dict, out_path) -> str:
    """The initramfs plus a second cpio segment holding ``files`` (the kernel
    unpacks concatenated archives in order)."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "guests", "linux"))
    from mkinitramfs import Cpio

    c = Cpio()
    for name, data in files.items():
        c.file(name, data, 0o755)
    with open(initrd, "rb") as f:
        base = f.read()
    # A following uncompressed segment must start 4-byte aligned; zeros between are skipped.
    out_path.write_bytes(base + bytes(-len(base) % 512) + c.finish())
    return str(out_path)


def test_sme_program_built_from_source_runs_in_a_linux_guest(host, tmp_path):
    """guests/linux-user/sme_hostloop.s, assembled and linked by Debian's
    binutils, runs twice at once in a 2-vCPU Linux guest with SME: each keeps
    ZA, ZT0, streaming Z0 and TPIDR2 live across sched_yield() and
    preemption and checks them 2000 times."""
    from support import guestbuild

    program = guestbuild.build_linux_program("sme_hostloop")
    with open(program, "rb") as f:
        initrd = _initrd_with(guest_files()[1], {"sme_hostloop": f.read()}, tmp_path / "initrd.gz")
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

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

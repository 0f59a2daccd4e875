"""``pyvmm run --sme-max-vl BITS [--no-sve]`` with a tiny firmware that powers
off at once: on a kernel with SME it runs (with and without SVE); without
SME it fails with one clear line."""
import struct
import subprocess
import sys

import pytest

from pyvmm import sme

pytestmark = pytest.mark.kvm

# movz x0, #8; movk x0, #0x8400, lsl #16; hvc #0  (PSCI SYSTEM_OFF)
POWER_OFF = struct.pack("<3I", 0xD2800100, 0xF2B08000, 0xD4000002)


def pyvmm(*args):
    return subprocess.run([sys.executable, "-m", "pyvmm", *map(str, args)], capture_output=True,
                          timeout=300)


@pytest.fixture(scope="module")
def found():
    from pyvmm.kvm import open_kvm

    with open_kvm() as kvm:
        return sme.discover(kvm)


@pytest.mark.parametrize("extra", [[], ["--no-sve"]], ids=["sve+sme", "sme-only"])
def test_run_with_sme(tmp_path, found, extra):
    fw = tmp_path / "off.bin"
    fw.write_bytes(POWER_OFF)
    svl = max(found.vls_bits) if found.present else 512
    r = pyvmm("run", "--firmware", fw, "-m", "64M", "--sme-max-vl", svl, *extra)
    if found.present:
        assert r.returncode == 0, r.stderr
    else:
        err = r.stderr.decode().strip()
        assert r.returncode == 1 and len(err.splitlines()) == 1, err
        assert "--sme-max-vl: this host's KVM offers no SME to guests" in err


@pytest.mark.sme_kernel
@pytest.mark.parametrize("extra", [[], ["--no-sve"]], ids=["sve+sme", "sme-only"])
def test_run_with_sme_on_the_sme_kernel(tmp_path, request, extra):
    from pyvmm.kvm import open_kvm
    from support.sme_guest import require_sme

    with open_kvm() as kvm:
        found = require_sme(request, kvm)
    fw = tmp_path / "off.bin"
    fw.write_bytes(POWER_OFF)
    r = pyvmm("run", "--firmware", fw, "-m", "64M", "--sme-max-vl", max(found.vls_bits), *extra)
    assert r.returncode == 0, r.stderr


@pytest.mark.sme_kernel
def test_run_refuses_an_svl_the_host_lacks(tmp_path, request):
    from pyvmm.kvm import open_kvm
    from support.sme_guest import require_sme

    with open_kvm() as kvm:
        found = require_sme(request, kvm)
    # SVLs are powers of two (128..2048), so 384 bits is never offered.
    missing = [q for q in range(1, 17) if q not in found.vqs]
    assert missing, found.vqs
    fw = tmp_path / "off.bin"
    fw.write_bytes(POWER_OFF)
    r = pyvmm("run", "--firmware", fw, "-m", "64M", "--sme-max-vl", 128 * missing[0])
    assert r.returncode == 1 and b"not offered by this host" in r.stderr  # a host limit, not a usage error

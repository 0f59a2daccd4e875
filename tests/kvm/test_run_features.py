"""What a ``pyvmm run`` guest gets by default (issue 14): SME, the PMU and
pointer authentication wherever this host's KVM offers them, at the largest
streaming length; ``--no-sme``/``--no-pmu``/``--no-pauth`` leave one out.
The guest (guests/baremetal/features_probe.s) executes one instruction per
feature that UNDEFs without it and prints what happened."""
import pytest

from pyvmm import guest_features
from support import guestbuild
from support.run_support import pyvmm

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def host():
    from pyvmm.kvm import open_kvm

    with open_kvm() as kvm:
        return guest_features.offered(kvm), _max_svl_bytes(kvm)


def _max_svl_bytes(kvm):
    from pyvmm import sme

    found = sme.discover(kvm)
    return max(found.vls_bits) // 8 if found.present else None


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    path = tmp_path_factory.mktemp("fw") / "probe.bin"
    path.write_bytes(guestbuild.build("features_probe"))
    return path


def _expected(offered, svl_bytes, sme=True, pmu=True, pauth=True):
    out = ("S" + chr(ord("A") + svl_bytes // 16)) if sme and offered.sme_bit is not None else "U"
    out += "P" if pmu and offered.pmu else "U"
    out += "G" if pauth and offered.pauth else "U"
    return out + "\n"


@pytest.mark.parametrize("flags", [[], ["--no-pmu"], ["--no-pauth"], ["--no-sme", "--no-pmu", "--no-pauth"]])
def test_features_default_on_where_offered(host, probe, flags):
    offered, svl = host
    r = pyvmm("run", "--firmware", probe, "-m", "64M", *flags, timeout=240)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == _expected(offered, svl, "--no-sme" not in flags, "--no-pmu" not in flags,
                                          "--no-pauth" not in flags)


def test_the_test_machine_offers_pmu_and_pauth(host):
    """QEMU's -cpu max has both; if KVM stopped offering them the test above would pass vacuously."""
    offered, _ = host
    assert offered.pmu and offered.pauth, offered


def test_pmu_node_follows_the_pmu(host, probe, tmp_path):
    for flags, want in (([], host[0].pmu), (["--no-pmu"], False)):
        dtb = tmp_path / "m.dtb"
        r = pyvmm("run", "--firmware", probe, "-m", "64M", "--dump-dtb", dtb, *flags, timeout=240)
        assert r.returncode == 0, r.stderr
        assert (b"arm,armv8-pmuv3" in dtb.read_bytes()) == want


@pytest.mark.sme_kernel
def test_sme_is_on_by_default_at_the_largest_length(request, host, probe):
    from pyvmm.kvm import open_kvm
    from support.sme_guest import require_sme

    with open_kvm() as kvm:
        require_sme(request, kvm)
    offered, svl = host
    r = pyvmm("run", "--firmware", probe, "-m", "64M", timeout=240)
    assert r.returncode == 0, r.stderr
    # The probe raises SMCR_EL1.LEN to 15 and prints the SVL it then runs at: the largest
    # length this host's SME_VLS offers, which is the default.
    assert r.stdout.decode().startswith("S" + chr(ord("A") + svl // 16)), r.stdout
    r = pyvmm("run", "--firmware", probe, "-m", "64M", "--no-sme", timeout=240)
    assert r.stdout.decode().startswith("U"), r.stdout


def test_sme_discovery_is_the_first_vcpus_init_without_scratch_vms(host, probe):
    """Where KVM_CAP_ARM_PMU_V3_STRICT says bits 8 and 9 are merged features (Linux 7.3 on),
    building a machine creates its own VM only: vCPU 0's INIT is SME discovery's probe
    (pyvmm/sme.py, probe_on_vcpu), and it answers as the full scratch-VM probe does."""
    from pyvmm import sme
    from pyvmm.kvm import open_kvm
    from pyvmm.machine import Machine, MachineConfig, prepare

    with open_kvm() as kvm:
        if kvm.check_extension(sme.CAP_PMU_V3_STRICT) <= 0:
            pytest.skip("this kernel does not offer KVM_CAP_ARM_PMU_V3_STRICT: the scratch VMs probe")
        vms = []
        create_vm = kvm.create_vm
        kvm.create_vm = lambda *a: vms.append(create_vm(*a)) or vms[-1]
        config = MachineConfig(firmware=str(probe), mem=64 << 20)
        m = Machine(kvm, config, prepare(config), lambda data: None)
        try:
            m.create_vm()
            m.create_vcpus()
        finally:
            m.close()
        assert len(vms) == 1
        assert m.sme_bit == host[0].sme_bit  # the fixture's offered(): the full probe, on its own handle

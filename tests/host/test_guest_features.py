"""Which vCPU features a run guest gets (pyvmm/guest_features.py, pure):
SVE, SME, PMU and pointer authentication on wherever KVM offers them,
--no-* leaves one out, a length asked of a missing extension is refused;
what a KVM handle offers is probed once (on fakes of the suite's KVM)."""

import pytest

from pyvmm import guest_features as gf
from pyvmm import sme
from pyvmm._record import replace
from pyvmm._ffi import const
from pyvmm.boot import fdt
from pyvmm.errors import HostUnsupported
from pyvmm.machine import MachineConfig
from support.fake_kvm import SME_BIT as FAKE_SME_BIT, FakeKvm

SME_BIT = 10  # whatever discover() found
ALL = gf.Offered(sve=True, sme_bit=SME_BIT, pmu=True, pauth=True)
NONE = gf.Offered(sve=False, sme_bit=None, pmu=False, pauth=False, sme_reason="no SME capability")


def test_everything_offered_is_on_by_default():
    c = gf.choose(MachineConfig(), ALL)
    assert c == gf.Chosen(sve=True, sme_bit=SME_BIT, pmu=True, pauth=True)
    assert c.init_features() == [const("KVM_ARM_VCPU_PSCI_0_2"), const("KVM_ARM_VCPU_SVE"), SME_BIT,
                                 const("KVM_ARM_VCPU_PMU_V3"), const("KVM_ARM_VCPU_PTRAUTH_ADDRESS"),
                                 const("KVM_ARM_VCPU_PTRAUTH_GENERIC")]
    assert c.extra_features() == [3, 5, 6]


def test_nothing_offered_nothing_given():
    assert gf.choose(MachineConfig(), NONE) == gf.Chosen(sve=False, sme_bit=None, pmu=False, pauth=False)
    assert gf.choose(MachineConfig(), NONE).init_features() == [const("KVM_ARM_VCPU_PSCI_0_2")]


@pytest.mark.parametrize("flag,field", [("sve", "sve"), ("sme", "sme_bit"), ("pmu", "pmu"), ("pauth", "pauth")])
def test_each_no_flag_leaves_one_out(flag, field):
    chosen = gf.choose(replace(MachineConfig(), **{flag: False}), ALL)
    assert getattr(chosen, field) in (False, None)
    others = {f: getattr(chosen, f) for f in ("sve", "sme_bit", "pmu", "pauth") if f != field}
    assert all(v not in (False, None) for v in others.values())


@pytest.mark.parametrize("kw,match", [({"sve_max_vl": 256}, "--sve-max-vl: this host's KVM offers no SVE"),
                                      ({"sme_max_vl": 256}, r"--sme-max-vl: .* no SME .*\(no SME capability\)")])
def test_a_length_for_a_missing_extension_is_refused(kw, match):
    with pytest.raises(HostUnsupported, match=match):
        gf.choose(MachineConfig(**kw), NONE)


def test_pmu_node_in_the_device_tree():
    node = fdt.pmu_node()
    assert node.name == "pmu"
    dtb = fdt.build(ram_size=64 << 20, mpidrs=[0], gic=fdt.Node("intc"), devices=[], pmu=True)
    assert b"arm,armv8-pmuv3" in dtb
    assert b"arm,armv8-pmuv3" not in fdt.build(ram_size=64 << 20, mpidrs=[0], gic=fdt.Node("intc"), devices=[])


class FakeKvmCaps(FakeKvm):
    """The suite's fake KVM (SVE, SME at SME_BIT) that also offers the PMU and
    pointer authentication, keeps ``probed`` as pyvmm.kvm.Kvm does, and counts
    what a probe costs: capability questions and scratch VMs."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.probed = {}
        self.questions = 0
        self.vms = 0

    def check_extension(self, cap):
        self.questions += 1
        if cap in (const("KVM_CAP_ARM_PMU_V3"), const("KVM_CAP_ARM_PTRAUTH_ADDRESS"),
                   const("KVM_CAP_ARM_PTRAUTH_GENERIC")):
            return 1
        return super().check_extension(cap)

    def create_vm(self, ipa_bits=None):
        self.vms += 1
        return super().create_vm(ipa_bits)


@pytest.fixture
def no_overrides(monkeypatch):
    monkeypatch.delenv(sme.ENV_BIT, raising=False)
    monkeypatch.delenv(sme.ENV_CAP, raising=False)


@pytest.mark.usefixtures("fake_syscalls", "no_overrides")
def test_offered_probes_sme_once_per_handle():
    kvm = FakeKvmCaps()
    first = gf.offered(kvm)
    assert first == gf.Offered(sve=True, sme_bit=FAKE_SME_BIT, pmu=True, pauth=True)
    assert kvm.vms > 0
    vms = kvm.vms
    assert gf.offered(kvm) == first and gf.offered(kvm, probe_sme=False) == replace(first, sme_bit=None,
                                                                                      sme_reason="not probed")
    assert kvm.vms == vms  # no scratch VMs the second time
    # a new handle (another open /dev/kvm) is asked again
    other = FakeKvmCaps(sme=False)
    assert gf.offered(other, probe_sme=False).pmu and other.questions > 0 and other.vms == 0


def test_kvm_handle_asks_each_capability_once():
    """pyvmm.kvm.Kvm.check_extension (the real method, on a handle whose
    ioctl is a counting fake): one KVM_CHECK_EXTENSION per capability."""
    from pyvmm.kvm import Kvm

    asked = []
    kvm = Kvm.__new__(Kvm)
    kvm._caps = {}
    kvm.ioctl = lambda name, arg=0: asked.append((name, arg)) or (0 if arg == const("KVM_CAP_ARM_SVE") else 1)
    for _ in range(3):
        assert kvm.check_extension(const("KVM_CAP_ARM_SVE")) == 0
        assert kvm.check_extension(const("KVM_CAP_ARM_PMU_V3")) == 1
    assert asked == [("KVM_CHECK_EXTENSION", const("KVM_CAP_ARM_SVE")),
                     ("KVM_CHECK_EXTENSION", const("KVM_CAP_ARM_PMU_V3"))]

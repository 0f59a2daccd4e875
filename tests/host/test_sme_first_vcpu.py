"""SME discovery on the first real vCPU (pyvmm.sme.probe_on_vcpu): one INIT
instead of scratch VMs where the kernel's caps say which candidate bits are
merged features. Pure logic on the suite's fake KVM (support.fake_kvm) and
small fakes below; tests/kvm/test_run_features.py boots real guests."""
import errno as E

import pytest

from pyvmm import sme
from pyvmm.errors import KvmError
from support.fake_kvm import SME_BIT, FakeKvm

pytestmark = pytest.mark.usefixtures("fake_syscalls")  # FakeKvm vCPUs go through the fd layer

PSCI, SVE = 2, 4


class StrictCapKvm(FakeKvm):
    """A fake 7.3-based kernel: offers KVM_CAP_ARM_PMU_V3_STRICT; counts scratch VMs."""

    def __init__(self, strict_cap=True, **kw):
        super().__init__(**kw)
        self.probed = {}  # as pyvmm.kvm.Kvm's
        self.vms = 0
        self.strict_cap = strict_cap

    def check_extension(self, cap):
        if cap == sme.CAP_PMU_V3_STRICT:
            return 1 if self.strict_cap else 0
        return super().check_extension(cap)

    def create_vm(self, ipa_bits=None):
        self.vms += 1
        return super().create_vm(ipa_bits)


def _first_vcpu(kvm):
    vm = kvm.create_vm()
    kvm.vms = 0  # the machine's own VM is not a scratch VM
    return vm.create_vcpu(0)


def test_sme_found_by_the_first_vcpus_own_init_without_a_scratch_vm():
    kvm = StrictCapKvm()
    vcpu = _first_vcpu(kvm)
    found, spoiled = sme.probe_on_vcpu(kvm, vcpu, [PSCI, SVE])
    assert not spoiled and found.bit == SME_BIT and found.vqs == (1, 2, 4, 8, 16)
    assert vcpu.inited and vcpu.has_sme and vcpu.has_sve and not vcpu.finalized
    assert kvm.vms == 0
    # the rest of the vCPU's configuration skips INIT; the discovery is kept for the handle
    shape = sme.configure_vcpu(vcpu, found.bit, None, 512, initialised=True)
    assert vcpu.finalized and shape.sme_vqs == (1, 2, 4)
    ioctls = kvm.ioctls
    assert sme.discover(kvm) is found and kvm.ioctls == ioctls and kvm.vms == 0


def test_no_sme_when_the_first_candidate_is_unknown_and_the_vcpu_is_left_untouched():
    kvm = StrictCapKvm(sme=False)
    vcpu = _first_vcpu(kvm)
    found, spoiled = sme.probe_on_vcpu(kvm, vcpu, [PSCI, SVE])
    assert not spoiled and not found.present
    assert f"bit {SME_BIT}: unknown to the kernel" in found.reason
    assert not vcpu.inited and kvm.vms == 0
    assert sme.discover(kvm) is found  # no scratch VM afterwards either
    sme.configure_vcpu(vcpu, None)  # its own INIT still works
    assert vcpu.inited and not vcpu.has_sme


def test_not_tried_without_the_cap_with_an_override_or_once_probed(monkeypatch):
    kvm = StrictCapKvm(strict_cap=False)
    vcpu = _first_vcpu(kvm)
    assert sme.probe_on_vcpu(kvm, vcpu, [PSCI]) == (None, False) and not vcpu.inited
    kvm = StrictCapKvm()
    monkeypatch.setenv(sme.ENV_BIT, str(SME_BIT))
    assert sme.probe_on_vcpu(kvm, _first_vcpu(kvm), [PSCI]) == (None, False)
    monkeypatch.delenv(sme.ENV_BIT)
    sme.discover(kvm)
    vcpu = _first_vcpu(kvm)
    assert sme.probe_on_vcpu(kvm, vcpu, [PSCI]) == (None, False) and not vcpu.inited


class OtherMeaningVcpu:
    """A vCPU of a kernel where the candidate bit is some other feature (INIT
    succeeds, SME_VLS is ENOENT), or where INIT fails past the feature check."""

    def __init__(self, init_errno=0):
        self.init_errno = init_errno
        self.inits = []

    def arm_vcpu_init(self, features):
        self.inits.append(list(features))
        if self.init_errno:
            raise KvmError(self.init_errno, "KVM_ARM_VCPU_INIT", "vcpu0")

    def get_one_reg(self, reg):
        raise KvmError(E.ENOENT, "KVM_GET_ONE_REG", "vcpu0")


@pytest.mark.parametrize("init_errno", [0, E.EINVAL])
def test_an_init_that_may_have_fixed_the_vms_features_spoils_it_and_nothing_is_kept(init_errno):
    kvm = StrictCapKvm()
    vcpu = OtherMeaningVcpu(init_errno)
    assert sme.probe_on_vcpu(kvm, vcpu, [PSCI, SVE]) == (None, True)
    assert vcpu.inits == [[PSCI, SVE, SME_BIT]]
    assert kvm.probed == {}  # the full probe (scratch VMs) answers instead
    assert sme.discover(kvm).bit == SME_BIT and kvm.vms > 0


def test_a_machine_whose_vm_the_probe_spoiled_builds_its_vcpus_on_a_new_vm(monkeypatch):
    from pyvmm.machine import MachineConfig
    from pyvmm.machine import machine as machine_mod

    kvm = StrictCapKvm()
    vms = []

    def create_vm(self):  # the VM without RAM: the fake VM has no memory slots
        self.vm = kvm.create_vm()
        vms.append(self.vm)
    monkeypatch.setattr(machine_mod.Machine, "create_vm", create_vm)
    probed = []
    monkeypatch.setattr(machine_mod, "probe_on_vcpu", lambda k, vcpu, feats: probed.append(vcpu) or (None, True))
    m = machine_mod.Machine(kvm, MachineConfig(firmware="fw.bin", cpus=2), None, lambda data: None)
    m.create_vm()
    m.create_vcpus()
    assert len(probed) == 1 and probed[0].vm is vms[0]
    assert len(vms) == 2 and m.vm is vms[1] and vms[0].vcpus == []  # the spoiled VM was closed
    assert [v.vm for v in m.vcpus] == [vms[1], vms[1]] and all(v.inited and v.finalized for v in m.vcpus)
    assert m.sme_bit == SME_BIT  # from the full probe, on scratch VMs

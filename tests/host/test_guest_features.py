"""Which vCPU features a run guest gets (pyvmm/guest_features.py, pure):
SVE, SME, PMU and pointer authentication on wherever KVM offers them,
--no-* leaves one out, a length asked of a missing extension is refused."""

import pytest

from pyvmm import guest_features as gf
from pyvmm._record import replace
from pyvmm._ffi import const
from pyvmm.boot import fdt
from pyvmm.errors import HostUnsupported
from pyvmm.machine import MachineConfig

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

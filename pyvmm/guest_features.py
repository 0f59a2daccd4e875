"""Which optional vCPU features a guest of ``pyvmm run`` gets: SVE, SME, the
PMUv3 and pointer authentication. Like QEMU's ``-cpu host``, each is on by
default wherever this host's KVM offers it (``--no-sve``, ``--no-sme``,
``--no-pmu``, ``--no-pauth`` leave one out); a vector length asked for
with ``--sve-max-vl``/``--sme-max-vl`` on a host without that extension is
refused. SME comes at every streaming length the host offers (KVM's SME_VLS
holds the lengths all host CPUs share, so the largest is the largest common
one), as SVE does; docs/sme.md.

The PMU needs one more step once the vGIC exists: :func:`init_pmu` (the
overflow interrupt, then PMU_V3_INIT; Documentation/virt/kvm/devices/vcpu.rst).
Pointer authentication needs both feature bits, address and generic keys,
or neither (KVM refuses one alone). Their registers (PMU counters and
controls, the pointer-auth keys) are in KVM_GET_REG_LIST, so snapshots save
and restore them with the rest; the INIT features are in the snapshot.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import List, Optional

from ._record import record
from ._ffi import const
from .boot import layout
from .errors import HostUnsupported

# arch/arm64/include/uapi/asm/kvm.h: vCPU device-attribute group and attributes of the PMU.
PMU_V3_CTRL = 0
PMU_V3_IRQ = 0
PMU_V3_INIT = 1
PMU_INTID = 16 + layout.PMU_PPI


@record(frozen=True)
class Offered:
    """What this host's KVM can give a guest."""
    sve: bool
    sme_bit: Optional[int]
    pmu: bool
    pauth: bool
    sme_reason: str = ""


@record(frozen=True)
class Chosen:
    """What the guest gets."""
    sve: bool
    sme_bit: Optional[int]
    pmu: bool
    pauth: bool

    def init_features(self) -> List[int]:
        """KVM_ARM_VCPU_INIT features for every vCPU (without POWER_OFF)."""
        feats = [const("KVM_ARM_VCPU_PSCI_0_2")]
        if self.sve:
            feats.append(const("KVM_ARM_VCPU_SVE"))
        if self.sme_bit is not None:
            feats.append(self.sme_bit)
        if self.pmu:
            feats.append(const("KVM_ARM_VCPU_PMU_V3"))
        if self.pauth:
            feats += [const("KVM_ARM_VCPU_PTRAUTH_ADDRESS"), const("KVM_ARM_VCPU_PTRAUTH_GENERIC")]
        return feats

    def extra_features(self) -> List[int]:
        """The features beyond PSCI, SVE and SME (which configure_vcpu adds itself)."""
        skip = {const("KVM_ARM_VCPU_PSCI_0_2"), const("KVM_ARM_VCPU_SVE"), self.sme_bit}
        return [f for f in self.init_features() if f not in skip]


def offered(kvm, probe_sme: bool = True) -> Offered:
    """Probe this host's KVM (the SME feature bit by sme.discover, ABI page §2;
    ``probe_sme=False``: SME left out, for a guest that gets none). Asking
    again probes nothing: the SME bit is kept in the handle's ``probed`` and
    :meth:`pyvmm.kvm.Kvm.check_extension` keeps each capability's answer."""
    from .sme import SmeDiscovery, discover

    found = discover(kvm) if probe_sme else SmeDiscovery(None, None, (), "not probed", "not probed")
    return Offered(sve=kvm.check_extension(const("KVM_CAP_ARM_SVE")) > 0,
                   sme_bit=found.bit if found.present else None,
                   pmu=kvm.check_extension(const("KVM_CAP_ARM_PMU_V3")) > 0,
                   pauth=(kvm.check_extension(const("KVM_CAP_ARM_PTRAUTH_ADDRESS")) > 0
                          and kvm.check_extension(const("KVM_CAP_ARM_PTRAUTH_GENERIC")) > 0),
                   sme_reason="" if found.present else found.reason)


def choose(config, host: Offered) -> Chosen:
    """The features for ``config`` (a MachineConfig) on ``host``: pure."""
    if config.sve_max_vl is not None and not host.sve:
        raise HostUnsupported("--sve-max-vl: this host's KVM offers no SVE to guests")
    if config.sme_max_vl is not None and host.sme_bit is None:
        raise HostUnsupported(f"--sme-max-vl: this host's KVM offers no SME to guests ({host.sme_reason})",
                              "see pyvmm caps and pyvmm abi-check; the project's SME kernel is "
                              "built by ci/qemu-aarch64/kernel/build")
    sme = config.sme_max_vl is not None or getattr(config, "sme", True)
    chosen = Chosen(sve=config.sve and host.sve,
                    sme_bit=host.sme_bit if sme else None,
                    pmu=getattr(config, "pmu", True) and host.pmu,
                    pauth=getattr(config, "pauth", True) and host.pauth)
    return chosen


def init_pmu(vcpu) -> None:
    """Give ``vcpu``'s PMUv3 its overflow interrupt and initialise it; after
    the vGIC is initialised, before the vCPU first runs."""
    vcpu.set_device_attr(PMU_V3_CTRL, PMU_V3_IRQ, PMU_INTID, ctype="int")
    vcpu.set_device_attr(PMU_V3_CTRL, PMU_V3_INIT)

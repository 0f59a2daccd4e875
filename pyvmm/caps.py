"""What this host's KVM offers: the data behind ``pyvmm caps``."""
from __future__ import annotations

from typing import Any, Dict, List

from .arm64 import regs
from . import sme
from ._ffi import const
from .errors import KvmError

_GIC_MODELS = (("gicv2", "KVM_DEV_TYPE_ARM_VGIC_V2"), ("gicv3", "KVM_DEV_TYPE_ARM_VGIC_V3"),
               ("gicv3-its", "KVM_DEV_TYPE_ARM_VGIC_ITS"))

_FLAG_CAPS = ("KVM_CAP_ARM_PSCI_0_2", "KVM_CAP_ARM_PMU_V3", "KVM_CAP_ARM_PTRAUTH_ADDRESS",
              "KVM_CAP_ARM_PTRAUTH_GENERIC", "KVM_CAP_ARM_MTE", "KVM_CAP_ARM_EL1_32BIT",
              "KVM_CAP_ARM_EL2", "KVM_CAP_COUNTER_OFFSET", "KVM_CAP_VCPU_EVENTS",
              "KVM_CAP_ARM_SYSTEM_SUSPEND", "KVM_CAP_IRQFD", "KVM_CAP_IOEVENTFD",
              "KVM_CAP_READONLY_MEM", "KVM_CAP_ARM_NISV_TO_USER")


def sve_vqs(kvm) -> List[int]:
    """SVE VQs the host offers: SVE_VLS of a scratch vCPU right after init."""
    if not kvm.check_extension(const("KVM_CAP_ARM_SVE")):
        return []
    vm = kvm.create_vm()
    try:
        vcpu = vm.create_vcpu(0)
        vcpu.arm_vcpu_init([const("KVM_ARM_VCPU_PSCI_0_2"), const("KVM_ARM_VCPU_SVE")])
        return regs.vls_decode(vcpu.get_one_reg(regs.SVE_VLS))
    finally:
        vm.close()


def gic_models(kvm) -> List[str]:
    found = []
    vm = kvm.create_vm()
    try:
        for label, const_name in _GIC_MODELS:
            try:
                vm.create_device(const(const_name), test=True)
                found.append(label)
            except KvmError:
                pass
    finally:
        vm.close()
    return found


def gather(kvm, sme_bit_override=None) -> Dict[str, Any]:
    """Everything ``pyvmm caps`` shows, as plain data (JSON-ready)."""
    sme_found = sme.discover(kvm, sme_bit_override)
    sve = sve_vqs(kvm)
    ipa = kvm.check_extension(const("KVM_CAP_ARM_VM_IPA_SIZE"))
    return {
        "api_version": kvm.get_api_version(),
        "ipa_bits_max": ipa or 40,
        "vcpus": {
            "recommended": kvm.check_extension(const("KVM_CAP_NR_VCPUS")),
            "max": kvm.check_extension(const("KVM_CAP_MAX_VCPUS")),
            "max_id": kvm.check_extension(const("KVM_CAP_MAX_VCPU_ID")),
        },
        "memslots": kvm.check_extension(const("KVM_CAP_NR_MEMSLOTS")),
        "sve": {"offered": bool(sve), "vector_lengths": [128 * q for q in sve]},
        "sme": {
            "offered": sme_found.present,
            "feature_bit": sme_found.bit,
            "capability": sme_found.cap,
            "found_by": sme_found.how,
            "vector_lengths": sme_found.vls_bits,
            "reason": "" if sme_found.present else f"not offered by this kernel ({sme_found.reason})",
        },
        "gic_models": gic_models(kvm),
        "capabilities": {name[len("KVM_CAP_"):].lower(): kvm.check_extension(const(name))
                         for name in _FLAG_CAPS},
    }

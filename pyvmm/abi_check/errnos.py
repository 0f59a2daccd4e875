"""The ABI page's §7 rules: the errnos the other sections do not already
provoke (unknown SME ids, unallocated INIT feature bits)."""
from __future__ import annotations

from ..arm64 import errno_explain, regs
from .._ffi import const
from .base import UNKNOWN_FEATURE_BIT, CheckerBase, _try


class ErrnoRules(CheckerBase):
    # -- §7: errnos not covered above --
    def _errnos(self):
        cfg = "sve+sme" if self.sve_offered else "sme"
        v = self.vcpu(cfg)
        bad = errno_explain.unknown_sme_id()
        self.check("7.unknown_sme_id", "§7", f"unknown SME id ({regs.name(bad)}) is EINVAL", "EINVAL",
                   lambda: _try(v.get_one_reg, bad))
        self.skip("7.init_host_cannot_offer", "§7", "VCPU_INIT with SME on a host that cannot offer it is EINVAL",
                  "needs a host without a common SVL; this one offers SME")
        self._close()

    def _unknown_bit(self):
        self.check("7.init_unknown_bit", "§7", f"VCPU_INIT with unknown feature bit {UNKNOWN_FEATURE_BIT} is ENOENT",
                   "ENOENT", lambda: self._init_bit(UNKNOWN_FEATURE_BIT))
        self._close()

    def _init_bit(self, bit: int) -> str:
        vm = self.kvm.create_vm()
        self._vms.append(vm)
        return _try(vm.create_vcpu(0).arm_vcpu_init, [const("KVM_ARM_VCPU_PSCI_0_2"), bit])

"""The ABI page's §6 rule: vector state saved, restored into a fresh vCPU in
the §6 order and saved again comes back identical."""
from __future__ import annotations

from ..arm64 import regs
from .. import vecstate
from .base import STATES, CheckerBase


class RestoreRules(CheckerBase):
    # -- §6: save, restore into a fresh vCPU, compare --
    def _roundtrip(self, cfg: str):
        states = STATES if "sme" in cfg.split("+") else ((0, 0),)
        for sm, za in states:
            def observe(sm=sm, za=za):
                src = self.vcpu(cfg)
                st = vecstate.VecState(src, self.bit if "sme" in cfg else None)
                if st.sme:
                    st.set_svcr(sm | za << 1)
                saved = _fill_patterns(st)
                vm = self.kvm.create_vm()
                self._vms.append(vm)
                dst = vecstate.restore_fresh(vm.create_vcpu(0), saved, self.bit)
                again = dst.save()
                diff = [n for n in saved.registers if saved.registers[n] != again.registers.get(n)]
                if again.svcr != saved.svcr:
                    diff.insert(0, "SVCR")
                return "identical" if not diff else "differs: " + ", ".join(diff[:8])
            self.check(f"6.roundtrip.{cfg}.sm{sm}za{za}", "§6",
                       f"{cfg.upper()} vCPU, SM={sm} ZA={za}: save, restore into a fresh vCPU in the §6 "
                       f"order, save again", "identical", observe)


def _fill_patterns(st: "vecstate.VecState") -> "vecstate.SavedVecState":
    """Distinct byte patterns in every data register of the current mode;
    returns the state saved afterwards (the control registers as they are)."""
    saved = st.save()
    svcr = saved.svcr
    for k, (name, data) in enumerate(list(saved.registers.items())):
        rid = regs.parse(name)
        kind = regs.decode(rid).kind
        n = len(data)
        if kind in ("sve_z", "sve_p", "sme_za", "sme_zt") or (kind == "core" and name.startswith("V")):
            pat = bytes((k * 29 + j * 7 + 1) & 0xFF for j in range(n))
        elif kind == "sve_ffr":
            pat = b"\xff" * (n // 2) + bytes(n - n // 2)  # FFR must be monotonic (WRFFR)
        else:
            continue
        st.vcpu.set_one_reg(rid, pat.ljust(regs.size_of(rid), b"\0"))
    if st.sme:
        st.vcpu.set_reg(regs.TPIDR2_EL0, 0x1122334455667788)
    assert st.svcr == svcr
    return st.save()

"""Conformance of the running kernel to the KVM SME ABI (the rules of
docs/kvm-sme-abi.md §4-§7, "the ABI page"), checked on scratch VMs.

Each rule gives pass, fail or skip with what was expected and what was
observed (usually an errno or a byte count). On a kernel without SME the
SME rules are skipped with that reason and the SVE rules still run. Where
the kernel and the ABI page disagree, the page is the contract: the rule
fails and shows the kernel's answer. Pure data out; the CLI prints.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional

from ..arm64 import regs
from ..arm64.vec import fa64_of, sme_level
from .access import AccessRules
from .base import FAIL, PASS, SKIP, Result
from .errnos import ErrnoRules
from .restore import RestoreRules
from .vls import VlsRules


class Checker(VlsRules, AccessRules, RestoreRules, ErrnoRules):
    """Every rule of the ABI page, run in order against ``kvm``; one file
    per section of the page holds the rules (vls §4, access §3/§5, restore
    §6, errnos §7)."""

    # -- the run --
    def run(self) -> List[Result]:
        try:
            self._host()
            if self.sve_offered:
                self._vls("sve", regs.SVE_VLS, "SVE_VLS")
            else:
                self.skip("4.sve", "§4", "SVE rules", "this kernel offers no SVE (KVM_CAP_ARM_SVE = 0)")
            self._vls("sme", regs.SME_VLS, "SME_VLS")
            self._finalize()
            self._before_finalize()
            self._reinit()
            configs = [c for c, ok in (("sve+sme", self.sme_present and self.sve_offered),
                                       ("sme", self.sme_present), ("sve", self.sve_offered)) if ok]
            for c in ("sve+sme", "sme"):
                if c not in configs:
                    self.skip(f"5.{c}", "§5", f"access table, {c.upper()} vCPU", self._no_sme)
            for c in configs:
                self._access(c)
                self._close()
            if self.sme_present:
                self._per_svl()
                for c in [c for c in configs if c != "sve"]:
                    self._svcr(c)
                    self._close()
                self._sysregs()
                self._zt0_needs_sme2()
                self._errnos()
                for c in [c for c in configs if c != "sve"]:
                    self._roundtrip(c)
                    self._close()
            else:
                for r, s, t in (("5.svcr", "§5", "SVCR side effects"), ("3.sysregs", "§3", "SME system registers"),
                                ("6.roundtrip", "§6", "save and restore through the §6 order")):
                    self.skip(r, s, t, self._no_sme)
            if self.sve_offered:
                self._roundtrip("sve")
            self._unknown_bit()
        finally:
            self._close()
        return self.results

    # -- §2: discovery --
    def _host(self):
        if self.sve_offered:
            v = self.vcpu("sve", finalize=False)
            self.sve_vqs = tuple(regs.vls_decode(v.get_one_reg(regs.SVE_VLS)))
        if not self.sme_present:
            self.skip("2.sme_bit", "§2", "SME feature bit found by probing",
                      f"SME is absent from this kernel ({self.discovery.reason})")
            return
        self._add("2.sme_bit", "§2", "SME feature bit found by probing", PASS, "a bit",
                  f"bit {self.bit} ({self.discovery.how})")
        self._add("2.sme_cap", "§2", "KVM_CAP_ARM_SME found", PASS if self.discovery.cap else FAIL,
                  "a capability above 251", str(self.discovery.cap))
        v = self.vcpu("sme", finalize=False)
        self.fa64 = fa64_of(v.get_reg(regs.ID_AA64SMFR0_EL1))
        self.sme2 = sme_level(v.get_reg(regs.ID_AA64PFR1_EL1)) >= 2
        self._close()


def run(kvm, sme_bit: Optional[int] = None) -> "Report":
    c = Checker(kvm, sme_bit)
    results = c.run()
    return Report(c.discovery, c.sve_vqs, c.sme_vqs, c.fa64, c.sme2, results)


@dataclass
class Report:
    discovery: object
    sve_vqs: tuple
    sme_vqs: tuple
    fa64: bool
    sme2: bool
    results: List[Result]

    def counts(self) -> dict:
        return {s: sum(1 for r in self.results if r.status == s) for s in (PASS, FAIL, SKIP)}

    @property
    def ok(self) -> bool:
        return not any(r.status == FAIL for r in self.results)

    def to_dict(self) -> dict:
        d = self.discovery
        return {
            "sme": {"present": d.present, "feature_bit": d.bit, "capability": d.cap, "found_by": d.how,
                    "reason": d.reason, "vector_lengths": [128 * q for q in self.sme_vqs],
                    "fa64": self.fa64, "sme2": self.sme2},
            "sve": {"vector_lengths": [128 * q for q in self.sve_vqs]},
            "counts": self.counts(),
            "ok": self.ok,
            "rules": [asdict(r) for r in self.results],
        }

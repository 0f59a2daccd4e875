"""The bookkeeping every ABI rule shares: results, the pass/fail/skip
verdicts and scratch vCPUs in their own VMs (:class:`CheckerBase`)."""
from __future__ import annotations

import errno as E
import itertools
from dataclasses import dataclass
from typing import Callable, List, Optional

from ..arm64 import regs
from .. import sme
from .._ffi import const
from ..arm64.vec import KVM_ARM_VCPU_VEC, with_sme_level
from ..errors import KvmError

PASS, FAIL, SKIP = "pass", "fail", "skip"
STATES = tuple(itertools.product((0, 1), (0, 1)))  # (SM, ZA)
FPSR_AFTER_SM_CHANGE = 0x0800009F  # ABI page §5
UNKNOWN_FEATURE_BIT = 31  # features[0] bit 31: unallocated in every known revision


@dataclass
class Result:
    rule: str
    section: str
    title: str
    status: str
    expected: str = ""
    observed: str = ""
    detail: str = ""


def _ename(err: int) -> str:
    return E.errorcode.get(err, str(err))


def _try(fn: Callable, *args) -> str:
    """'ok' or the errno name of the KvmError ``fn`` raised."""
    try:
        fn(*args)
        return "ok"
    except KvmError as e:
        return _ename(e.errno)


class _SetupFailed(Exception):
    pass


class CheckerBase:
    """Runs rules against ``kvm`` (a :class:`pyvmm.kvm.Kvm` or any object
    with the same methods); the rule classes of each ABI section build on it."""

    def __init__(self, kvm, sme_bit: Optional[int] = None):
        self.kvm = kvm
        self.results: List[Result] = []
        self.discovery = sme.discover(kvm, sme_bit)
        self.bit = self.discovery.bit
        self.sve_offered = bool(kvm.check_extension(const("KVM_CAP_ARM_SVE")))
        self._vms: list = []
        self.sve_vqs: tuple = ()
        self.sme_vqs: tuple = tuple(self.discovery.vqs)
        self.fa64 = self.sme2 = False

    # -- bookkeeping --
    def _add(self, rule, section, title, status, expected="", observed="", detail=""):
        self.results.append(Result(rule, section, title, status, expected, observed, detail))

    def check(self, rule: str, section: str, title: str, expected: str, observe: Callable[[], str]):
        try:
            observed = observe()
        except _SetupFailed as e:
            return self._add(rule, section, title, FAIL, expected, "setup failed", str(e))
        except KvmError as e:
            return self._add(rule, section, title, FAIL, expected, _ename(e.errno), str(e))
        # "A|B": the ABI page allows either (e.g. it does not order two checks).
        ok = observed in expected.split("|")
        self._add(rule, section, title, PASS if ok else FAIL, expected, observed)

    def skip(self, rule: str, section: str, title: str, reason: str):
        self._add(rule, section, title, SKIP, detail=reason)

    def _close(self):
        for vm in self._vms:
            vm.close()
        self._vms = []

    def vcpu(self, config: str, finalize: bool = True, sme_vq: Optional[int] = None,
             pfr1_sme: Optional[int] = None):
        """A scratch vCPU in its own VM. ``config``: sve+sme, sme, sve or none."""
        vm = self.kvm.create_vm()
        self._vms.append(vm)
        v = vm.create_vcpu(0)
        feats = [const("KVM_ARM_VCPU_PSCI_0_2")]
        if "sve" in config.split("+"):
            feats.append(const("KVM_ARM_VCPU_SVE"))
        if "sme" in config.split("+"):
            feats.append(self.bit)
        try:
            v.arm_vcpu_init(feats)
            if sme_vq is not None:
                v.set_one_reg(regs.SME_VLS, regs.vls_encode(regs.vls_cut(self.sme_vqs, sme_vq)))
            if pfr1_sme is not None:
                v.set_reg(regs.ID_AA64PFR1_EL1, with_sme_level(v.get_reg(regs.ID_AA64PFR1_EL1), pfr1_sme))
            if finalize:
                v.arm_vcpu_finalize(KVM_ARM_VCPU_VEC)
        except KvmError as e:
            raise _SetupFailed(f"{config} vCPU: {e}") from None
        return v

    @property
    def sme_present(self) -> bool:
        return self.discovery.present

    @property
    def _no_sme(self) -> str:
        return "SME is absent from this kernel (see the SME line above)"

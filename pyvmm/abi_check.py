"""Conformance of the running kernel to the KVM SME ABI (the rules of
docs/kvm-sme-abi.md §4-§7, "the ABI page"), checked on scratch VMs.

Each rule gives pass, fail or skip with what was expected and what was
observed (usually an errno or a byte count). On a kernel without SME the
SME rules are skipped with that reason and the SVE rules still run. Where
the kernel and the ABI page disagree, the page is the contract: the rule
fails and shows the kernel's answer. Pure data out; the CLI prints.
"""
from __future__ import annotations

import errno as E
import itertools
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

from . import errno_explain, regs, restore_plan, sme, vecstate
from ._ffi import const
from .errors import KvmError

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


class Checker:
    """Runs the rules against ``kvm`` (a :class:`pyvmm.kvm.Kvm` or any object
    with the same methods)."""

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
                pfr1 = v.get_reg(regs.ID_AA64PFR1_EL1)
                v.set_reg(regs.ID_AA64PFR1_EL1, (pfr1 & ~(0xF << 24)) | (pfr1_sme << 24))
            if finalize:
                v.arm_vcpu_finalize(sme.KVM_ARM_VCPU_VEC)
        except KvmError as e:
            raise _SetupFailed(f"{config} vCPU: {e}") from None
        return v

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

    @property
    def sme_present(self) -> bool:
        return self.discovery.present

    @property
    def _no_sme(self) -> str:
        return "SME is absent from this kernel (see the SME line above)"

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
        self.fa64 = bool(v.get_reg(regs.ID_AA64SMFR0_EL1) & vecstate.SMFR0_FA64)
        self.sme2 = (v.get_reg(regs.ID_AA64PFR1_EL1) >> 24) & 0xF >= 2
        self._close()

    # -- §4: vector lengths --
    def _vls(self, feat: str, vls_id: int, name: str):
        sec = "§4"
        other = "sve" if feat == "sme" else "none"
        if feat == "sve" or self.sve_offered:
            self.check(f"4.{feat}.vls.no_feature", sec, f"{name} on a vCPU without {feat.upper()} is ENOENT",
                       "ENOENT", lambda: _try(self.vcpu(other, finalize=False).get_one_reg, vls_id))
        if feat == "sme" and not self.sme_present:
            self.skip(f"4.{feat}.vls", sec, f"{name} read, cut, refuse", self._no_sme)
            self._close()
            return
        host = self.sve_vqs if feat == "sve" else self.sme_vqs
        v = self.vcpu(feat, finalize=False)

        def read():
            got = tuple(regs.vls_decode(v.get_one_reg(vls_id)))
            if feat == "sme":
                self.sme_vqs = got
            return "ok" if got and max(got) <= 16 else f"set {list(got)}"
        self.check(f"4.{feat}.vls.read", sec, f"{name} readable after INIT: the host's VQ set, VQ <= 16",
                   "ok", read)
        host = self.sve_vqs if feat == "sve" else self.sme_vqs

        def cut_all():
            bad = []
            for q in host:
                want = regs.vls_cut(host, q)
                v.set_one_reg(vls_id, regs.vls_encode(want))
                if regs.vls_decode(v.get_one_reg(vls_id)) != want:
                    bad.append(128 * q)
            v.set_one_reg(vls_id, regs.vls_encode(host))
            return "ok" if not bad else "read back differs at " + ", ".join(map(str, bad))
        self.check(f"4.{feat}.vls.cut", sec,
                   f"{name} cut at every offered maximum ({len(host)} of them) is accepted and reads back",
                   "ok", cut_all)
        if len(host) >= 2:
            hole = [q for q in host if q != host[0]]
            self.check(f"4.{feat}.vls.refuse_hole", sec, f"{name} with a hole below its maximum is EINVAL",
                       "EINVAL", lambda: _try(v.set_one_reg, vls_id, regs.vls_encode(hole)))
        gaps = [q for q in range(1, max(host)) if q not in host]
        if gaps:  # sparse set (SME may be, §4): a length the host lacks, below its maximum
            bad = sorted(set(host) | {gaps[-1]})
            self.check(f"4.{feat}.vls.refuse_unoffered", sec,
                       f"{name} with {128 * gaps[-1]} bits, which the host does not offer, is EINVAL",
                       "EINVAL", lambda: _try(v.set_one_reg, vls_id, regs.vls_encode(bad)))
        above = max(host) + 1
        self.check(f"4.{feat}.vls.refuse_above", sec, f"{name} with VQ {above} above the host's set is EINVAL",
                   "EINVAL", lambda: _try(v.set_one_reg, vls_id, regs.vls_encode(list(host) + [above])))
        self.check(f"4.{feat}.vls.refuse_empty", sec, f"empty {name} is EINVAL", "EINVAL",
                   lambda: _try(v.set_one_reg, vls_id, regs.vls_encode([])))

        def after():
            v.arm_vcpu_finalize(sme.KVM_ARM_VCPU_VEC)
            return _try(v.set_one_reg, vls_id, regs.vls_encode(host))
        self.check(f"4.{feat}.vls.after_finalize", sec, f"writing {name} after FINALIZE is EPERM", "EPERM", after)
        self.check(f"4.{feat}.vls.read_after_finalize", sec, f"{name} stays readable after FINALIZE",
                   "ok", lambda: _try(v.get_one_reg, vls_id))
        self._close()

    # -- §4: finalisation --
    def _finalize(self):
        sec = "§4"
        self.check("4.finalize.neither", sec, "FINALIZE(4) on a vCPU with neither SVE nor SME is EINVAL",
                   "EINVAL", lambda: _try(self.vcpu("none", finalize=False).arm_vcpu_finalize, 4))
        cfgs = (["sve"] if self.sve_offered else []) + (["sme"] if self.sme_present else []) + (
            ["sve+sme"] if self.sme_present and self.sve_offered else [])
        for c in cfgs:
            self.check(f"4.finalize.twice.{c}", sec, f"second FINALIZE(4) on a {c.upper()} vCPU is EPERM",
                       "EPERM", lambda c=c: _try(self.vcpu(c).arm_vcpu_finalize, 4))
        if self.sme_present:
            def sme_only():
                v = self.vcpu("sme")  # INIT and FINALIZE; a failure is reported as setup failed
                return f"ok {_try(v.get_one_reg, regs.SME_VLS)} {_try(v.get_one_reg, regs.SVE_VLS)}"
            self.check("4.finalize.sme_without_sve", sec,
                       "SME without SVE: INIT and FINALIZE work, SME_VLS reads, SVE_VLS is ENOENT",
                       "ok ok ENOENT", sme_only)
            if self.sve_offered:
                def both():
                    v = self.vcpu("sve+sme")
                    return " ".join(_try(v.set_one_reg, i, v.get_one_reg(i)) for i in (regs.SVE_VLS, regs.SME_VLS))
                self.check("4.finalize.one_call_both", sec,
                           "one FINALIZE(4) fixes SVE_VLS and SME_VLS together (both then EPERM)",
                           "EPERM EPERM", both)
        else:
            self.skip("4.finalize.sme", sec, "finalisation of SME vCPUs", self._no_sme)
        self._close()

    def _before_finalize(self):
        sec = "§4"
        cfg = "sve+sme" if self.sme_present and self.sve_offered else ("sve" if self.sve_offered else
                                                                       "sme" if self.sme_present else None)
        if cfg is None:
            return self.skip("4.before_finalize", sec, "EPERM before FINALIZE", "neither SVE nor SME")
        v = self.vcpu(cfg, finalize=False)

        def run():
            v.set_immediate_exit(True)  # if it does run, return at once
            try:
                v.run()
                return "ran"
            except KvmError as e:
                return _ename(e.errno)
            finally:
                v.set_immediate_exit(False)
        self.check(f"4.before_finalize.run.{cfg}", sec, "KVM_RUN before FINALIZE is EPERM", "EPERM", run)
        self.check(f"4.before_finalize.reg_list.{cfg}", sec, "KVM_GET_REG_LIST before FINALIZE is EPERM",
                   "EPERM", lambda: _try(v.get_reg_list))
        ids = []
        if "sve" in cfg:
            ids += [regs.sve_z(0), regs.sve_p(0), regs.sve_ffr()]
        if "sme" in cfg:
            ids += [regs.sme_za_row(0)] + ([regs.sme_zt(0)] if self.sme2 else [])
        for i in ids:
            self.check(f"4.before_finalize.{regs.name(i)}.{cfg}", sec,
                       f"{regs.name(i)} before FINALIZE is EPERM", "EPERM", lambda i=i: _try(v.get_one_reg, i))
        self._close()

    def _reinit(self):
        sec = "§4"
        cfg = "sve+sme" if self.sme_present and self.sve_offered else ("sve" if self.sve_offered else None)
        if cfg is None:
            return
        v = self.vcpu(cfg)

        def observe():
            vl = 16 * max(self.sve_vqs)
            v.set_one_reg(regs.sve_z(0), b"\x5a" * 256)
            if "sme" in cfg:
                v.set_reg(regs.SVCR, restore_plan.SVCR_ZA)
                v.set_one_reg(regs.sme_za_row(0), b"\xa5" * 256)
            feats = [const("KVM_ARM_VCPU_PSCI_0_2"), const("KVM_ARM_VCPU_SVE")] + (
                [self.bit] if "sme" in cfg else [])
            v.arm_vcpu_init(feats)
            out = []
            if "sme" in cfg:
                out.append(f"SVCR={v.get_reg(regs.SVCR):#x}")
            z = v.get_one_reg(regs.sve_z(0))
            out.append("Z0 zero" if not any(z) else f"Z0 kept {sum(1 for b in z[:vl] if b)} bytes")
            return " ".join(out)
        self.check(f"4.reinit.{cfg}", sec, "INIT again on a finalised vCPU zeroes the vector state, SVCR = 0",
                   ("SVCR=0x0 " if "sme" in cfg else "") + "Z0 zero", observe)
        self._close()

    # -- §5: the access table, for each SVCR state --
    def _expect(self, cfg: str, sm: int, za: int) -> dict:
        """The ABI page §5 table: expected outcome per register class."""
        sve, smecfg = "sve" in cfg.split("+"), "sme" in cfg.split("+")
        vl = (16 * max(self.sme_vqs)) if sm else (16 * max(self.sve_vqs) if sve else 0)
        exp = {}
        exp["V0"] = "ok" if (smecfg and not sve and not sm) else "EINVAL"
        exp["Z0"] = f"ok {vl}B" if vl else "ENOENT"
        exp["P0"] = f"ok {vl // 8}B" if vl else "ENOENT"
        ffr = vl and (not sm or self.fa64)
        exp["FFR"] = f"ok {vl // 8}B" if ffr else "ENOENT"
        return exp

    def _len_probe(self, v, reg_id: int) -> str:
        """Write all-ones, read back: 'ok NB' with N the bytes that carry data."""
        size = regs.size_of(reg_id)
        try:
            v.set_one_reg(reg_id, b"\xff" * size)
            got = v.get_one_reg(reg_id)
        except KvmError as e:
            return _ename(e.errno)
        n = len(got) - len(got.lstrip(b"\xff")) if got[:1] == b"\xff" else 0
        if any(got[n:]):
            return f"ok but {n}B then junk"
        return f"ok {n}B"

    def _access(self, cfg: str):
        sec = "§5"
        v = self.vcpu(cfg)
        smecfg = "sme" in cfg.split("+")
        states = STATES if smecfg else ((0, 0),)
        svl_b = 16 * max(self.sme_vqs) if smecfg else 0
        for sm, za in states:
            tag = f"5.{cfg}.sm{sm}za{za}"
            where = f"{cfg.upper()} vCPU, SM={sm} ZA={za}"
            if smecfg:
                try:
                    v.set_reg(regs.SVCR, sm | (za << 1))
                except KvmError as e:
                    self._add(tag, sec, f"{where}: set SVCR", FAIL, "ok", _ename(e.errno), str(e))
                    continue
            exp = self._expect(cfg, sm, za)
            self.check(f"{tag}.V0", sec, f"{where}: V0 (CORE id)", exp["V0"],
                       lambda: _try(v.get_one_reg, regs.core("V0")))
            for name, rid in (("Z0", regs.sve_z(0)), ("P0", regs.sve_p(0)), ("FFR", regs.sve_ffr())):
                self.check(f"{tag}.{name}", sec, f"{where}: {name} exists, data length", exp[name],
                           lambda rid=rid: self._len_probe(v, rid))
            if exp["Z0"] != "ENOENT":
                self.check(f"{tag}.Z0_slice1", sec, f"{where}: Z0 slice 1 is ENOENT", "ENOENT",
                           lambda: _try(v.get_one_reg, regs.sve_z(0, 1)))
            if smecfg:
                if za:
                    self.check(f"{tag}.ZA", sec, f"{where}: ZA rows 0..{svl_b - 1} of {svl_b} bytes",
                               f"ok {svl_b}B ok", lambda: self._len_probe(v, regs.sme_za_row(0)) + " " +
                               _try(v.get_one_reg, regs.sme_za_row(svl_b - 1)))
                    if svl_b < 256:
                        self.check(f"{tag}.ZA_row_svl", sec, f"{where}: ZA row {svl_b} (= SVL/8) is EINVAL",
                                   "EINVAL", lambda: _try(v.get_one_reg, regs.sme_za_row(svl_b)))
                    self.check(f"{tag}.ZA_slice1", sec, f"{where}: ZA[0] slice 1 is ENOENT", "ENOENT",
                               lambda: _try(v.get_one_reg, regs.sme_za_row(0, 1)))
                    self.check(f"{tag}.ZT0", sec, f"{where}: ZT0 (" + ("SME2" if self.sme2 else "no SME2") + ")",
                               "ok 64B" if self.sme2 else "ENOENT", lambda: self._len_probe(v, regs.sme_zt(0)))
                else:
                    self.check(f"{tag}.ZA", sec, f"{where}: ZA row get and set are EBUSY", "EBUSY EBUSY",
                               lambda: _try(v.get_one_reg, regs.sme_za_row(0)) + " " +
                               _try(v.set_one_reg, regs.sme_za_row(0), bytes(256)))
                    # Without SME2 ZT0 does not exist at all; §5 does not say
                    # whether that or ZA = 0 is checked first.
                    self.check(f"{tag}.ZT0", sec, f"{where}: ZT0 is EBUSY", "EBUSY" if self.sme2 else
                               "ENOENT|EBUSY", lambda: _try(v.get_one_reg, regs.sme_zt(0)))
            self.check(f"{tag}.reg_list", sec, f"{where}: KVM_GET_REG_LIST holds exactly the accessible "
                       f"vector registers, each readable", "ok", lambda: self._reg_list(v, cfg, sm, za))
        if smecfg:
            v.set_reg(regs.SVCR, 0)

    def _reg_list(self, v, cfg: str, sm: int, za: int) -> str:
        smecfg = "sme" in cfg.split("+")
        shape = restore_plan.VecShape(
            sve="sve" in cfg.split("+"), sme=smecfg, svcr=sm | (za << 1), sve_vqs=self.sve_vqs,
            sme_vqs=self.sme_vqs if smecfg else (), fa64=self.fa64, sme2=self.sme2)
        want = set(restore_plan.vector_ids(shape)) | set(restore_plan.za_ids(shape))
        lst = v.get_reg_list()
        vec_kinds = ("sve_z", "sve_p", "sve_ffr", "sme_za", "sme_zt")
        listed = {i for i in lst if regs.decode(i).kind in vec_kinds or regs.decode(i).name.startswith("V")
                  and regs.decode(i).kind == "core"}
        problems = []
        if listed - want:
            problems.append("listed but not accessible: " + restore_plan.name_ranges(sorted(listed - want)))
        if want - listed:
            problems.append("missing: " + restore_plan.name_ranges(sorted(want - listed)))
        sme_sys = {regs.SVCR, regs.SMCR_EL1, regs.TPIDR2_EL0, regs.SMPRI_EL1, regs.SMIDR_EL1}
        have_sys = sme_sys & set(lst)
        if smecfg and have_sys != sme_sys:
            problems.append("SME sysregs missing: " + ", ".join(regs.name(i) for i in sme_sys - have_sys))
        if not smecfg and have_sys:
            problems.append("SME sysregs listed: " + ", ".join(regs.name(i) for i in have_sys))
        unreadable = []
        for i in sorted(listed & want):
            try:
                v.get_one_reg(i)
            except KvmError as e:
                unreadable.append(f"{regs.name(i)} {_ename(e.errno)}")
        if unreadable:
            problems.append("listed but unreadable: " + ", ".join(unreadable[:6]))
        if smecfg and regs.SVCR in lst and listed:
            first_vec = min(lst.index(i) for i in listed)
            if lst.index(regs.SVCR) < first_vec:
                problems.append("SVCR listed before the vector registers (§6 says after)")
        return "; ".join(problems) or "ok"

    # -- §4/§5: every streaming length the host offers --
    def _per_svl(self):
        cfg = "sve+sme" if self.sve_offered else "sme"
        for q in self.sme_vqs:
            svl_b = 16 * q

            def observe(q=q, svl_b=svl_b):
                v = self.vcpu(cfg, sme_vq=q)
                if tuple(regs.vls_decode(v.get_one_reg(regs.SME_VLS))) != tuple(regs.vls_cut(self.sme_vqs, q)):
                    return "SME_VLS not cut"
                v.set_reg(regs.SVCR, restore_plan.SVCR_SM | restore_plan.SVCR_ZA)
                out = [f"Z0 {self._len_probe(v, regs.sve_z(0))}", f"ZA {self._len_probe(v, regs.sme_za_row(svl_b - 1))}"]
                if svl_b < 256:
                    out.append(f"row{svl_b} {_try(v.get_one_reg, regs.sme_za_row(svl_b))}")
                rows = sum(1 for i in v.get_reg_list() if regs.decode(i).kind == "sme_za")
                out.append(f"{rows} rows listed")
                v.set_reg(regs.SVCR, 0)
                self._close()
                return " ".join(out)
            exp = f"Z0 ok {svl_b}B ZA ok {svl_b}B" + (f" row{svl_b} EINVAL" if svl_b < 256 else "") + \
                f" {svl_b} rows listed"
            self.check(f"5.svl{128 * q}", "§4, §5",
                       f"SME_VLS cut at {128 * q} bits: streaming Z0 and ZA rows of {svl_b} bytes, {svl_b} rows",
                       exp, observe)

    # -- §5: SVCR side effects --
    def _svcr(self, cfg: str):
        sec = "§5"
        sve = "sve" in cfg.split("+")
        v = self.vcpu(cfg)
        self.check(f"5.{cfg}.svcr.reserved", sec, "SVCR with bit 2 or bit 63 set is EINVAL", "EINVAL EINVAL",
                   lambda: _try(v.set_reg, regs.SVCR, 4) + " " + _try(v.set_reg, regs.SVCR, 1 << 63))
        has_fpmr = _try(v.get_one_reg, regs.FPMR) == "ok"
        svl_b = 16 * max(self.sme_vqs)

        def fill(sm: int):
            """Patterns in every vector register of this mode, FPSR, FPMR."""
            if not sve and not sm:
                v.set_one_reg(regs.core("V0"), b"\x11" * 16)
            else:
                v.set_one_reg(regs.sve_z(0), b"\x22" * 256)
                v.set_one_reg(regs.sve_p(0), b"\x33" * 32)
                if not sm or self.fa64:
                    v.set_one_reg(regs.sve_ffr(), b"\xff" * 32)
            v.set_reg(regs.core("FPSR"), 0x10)
            if has_fpmr:
                v.set_reg(regs.FPMR, 0x7)

        def vectors(sm: int) -> str:
            if not sve and not sm:
                return "V0 zero" if not any(v.get_one_reg(regs.core("V0"))) else "V0 kept"
            ids = [regs.sve_z(0), regs.sve_p(0)] + ([regs.sve_ffr()] if not sm or self.fa64 else [])
            kept = [regs.name(i) for i in ids if any(v.get_one_reg(i))]
            return "vectors zero" if not kept else "kept " + ",".join(kept)

        for za in (0, 1):
            for sm0 in (0, 1):
                sm1 = 1 - sm0
                def change(sm0=sm0, sm1=sm1, za=za):
                    v.set_reg(regs.SVCR, sm0 | za << 1)
                    fill(sm0)
                    if za:
                        v.set_one_reg(regs.sme_za_row(0), b"\x44" * 256)
                    v.set_reg(regs.SVCR, sm1 | za << 1)
                    out = [vectors(sm1), f"FPSR={v.get_reg(regs.core('FPSR')):#x}"]
                    if has_fpmr:
                        out.append(f"FPMR={v.get_reg(regs.FPMR):#x}")
                    if za:
                        row = v.get_one_reg(regs.sme_za_row(0))
                        out.append("ZA kept" if row[:svl_b] == b"\x44" * svl_b else "ZA changed")
                    return " ".join(out)
                exp = ["vectors zero" if (sve or sm1) else "V0 zero", f"FPSR={FPSR_AFTER_SM_CHANGE:#x}"]
                if has_fpmr:
                    exp.append("FPMR=0x0")
                if za:
                    exp.append("ZA kept")
                self.check(f"5.{cfg}.svcr.sm{sm0}to{sm1}.za{za}", sec,
                           f"SM {sm0}->{sm1} (ZA={za}) zeroes V/Z/P/FFR, FPSR=0x0800009F, FPMR=0"
                           + (", ZA untouched" if za else ""), " ".join(exp), change)

        def za_on():
            v.set_reg(regs.SVCR, restore_plan.SVCR_ZA)
            v.set_one_reg(regs.sme_za_row(0), b"\x55" * 256)
            if self.sme2:
                v.set_one_reg(regs.sme_zt(0), b"\x66" * 64)
            v.set_reg(regs.SVCR, 0)
            v.set_reg(regs.SVCR, restore_plan.SVCR_ZA)
            out = ["ZA zero" if not any(v.get_one_reg(regs.sme_za_row(0))) else "ZA kept"]
            if self.sme2:
                out.append("ZT0 zero" if not any(v.get_one_reg(regs.sme_zt(0))) else "ZT0 kept")
            return " ".join(out)
        self.check(f"5.{cfg}.svcr.za_on_zeroes", sec, "ZA 0->1 zeroes ZA" + (" and ZT0" if self.sme2 else ""),
                   "ZA zero" + (" ZT0 zero" if self.sme2 else ""), za_on)

        for sm in (0, 1):
            def za_keeps(sm=sm):
                v.set_reg(regs.SVCR, sm)
                fill(sm)
                v.set_reg(regs.SVCR, sm | restore_plan.SVCR_ZA)
                v.set_reg(regs.SVCR, sm)
                return f"{vectors(sm)} FPSR={v.get_reg(regs.core('FPSR')):#x}"
            self.check(f"5.{cfg}.svcr.za_toggle_keeps_vectors.sm{sm}", sec,
                       f"changing only ZA (SM={sm}) leaves V/Z/P/FFR and FPSR alone (only an SM change zeroes them)",
                       ("V0 kept" if not sve and not sm else "kept " + ",".join(
                           ["Z0", "P0"] + (["FFR"] if not sm or self.fa64 else []))) + " FPSR=0x10", za_keeps)

        def same():
            v.set_reg(regs.SVCR, 3)
            fill(1)
            v.set_one_reg(regs.sme_za_row(0), b"\x77" * 256)
            v.set_reg(regs.SVCR, 3)
            za_ok = v.get_one_reg(regs.sme_za_row(0))[:svl_b] == b"\x77" * svl_b
            return f"{vectors(1)} {'ZA kept' if za_ok else 'ZA changed'}"
        self.check(f"5.{cfg}.svcr.same_value", sec, "writing the current SVCR changes nothing",
                   "kept " + ",".join(["Z0", "P0"] + (["FFR"] if self.fa64 else [])) + " ZA kept", same)
        v.set_reg(regs.SVCR, 0)

    # -- §3: SME system registers --
    def _sysregs(self):
        sec = "§3"
        cfg = "sve+sme" if self.sve_offered else "sme"
        v = self.vcpu(cfg)
        self.check("3.smpri", sec, "SMPRI_EL1 reads 0, takes 0, refuses non-zero with EINVAL", "0 ok EINVAL",
                   lambda: f"{v.get_reg(regs.SMPRI_EL1)} {_try(v.set_reg, regs.SMPRI_EL1, 0)} "
                           f"{_try(v.set_reg, regs.SMPRI_EL1, 1)}")
        self.check("3.smidr", sec, "SMIDR_EL1 readable, SMPS (bit 15) masked", "ok SMPS=0",
                   lambda: f"ok SMPS={v.get_reg(regs.SMIDR_EL1) >> 15 & 1}")

        def tpidr2():
            v.set_reg(regs.TPIDR2_EL0, 0x0123456789ABCDEF)
            return f"{v.get_reg(regs.TPIDR2_EL0):#x}"
        self.check("3.tpidr2", sec, "TPIDR2_EL0 is a plain register", "0x123456789abcdef", tpidr2)

        def smcr():
            val = v.get_reg(regs.SMCR_EL1)
            v.set_reg(regs.SMCR_EL1, val)
            return "ok" if v.get_reg(regs.SMCR_EL1) == val else "changed"
        self.check("3.smcr", sec, "SMCR_EL1 reads and writes back", "ok", smcr)
        self.check("3.pfr1_sme", sec, "ID_AA64PFR1_EL1.SME is 1 or 2 on an SME vCPU",
                   "ok", lambda: "ok" if (v.get_reg(regs.ID_AA64PFR1_EL1) >> 24) & 0xF in (1, 2) else
                   f"SME field {(v.get_reg(regs.ID_AA64PFR1_EL1) >> 24) & 0xF}")
        if self.sve_offered:
            self.check("3.pfr1_sme_hidden", sec, "ID_AA64PFR1_EL1.SME is 0 on a vCPU without SME", "0",
                       lambda: str((self.vcpu("sve").get_reg(regs.ID_AA64PFR1_EL1) >> 24) & 0xF))

        def smfr0():
            w = self.vcpu(cfg, finalize=False)
            val = w.get_reg(regs.ID_AA64SMFR0_EL1)
            lower = val & ~vecstate.SMFR0_FA64
            r = _try(w.set_reg, regs.ID_AA64SMFR0_EL1, lower)
            return r + (" read back" if r == "ok" and w.get_reg(regs.ID_AA64SMFR0_EL1) == lower else "")
        if self.fa64:
            self.check("3.smfr0_writable", sec, "ID_AA64SMFR0_EL1 is writable (FA64 cleared, lower is safe)",
                       "ok read back", smfr0)
        self._close()

    def _zt0_needs_sme2(self):
        if not self.sme2:
            return self.skip("5.zt0_needs_sme2", "§5", "ZT0 is ENOENT without SME2",
                             "the host has no SME2, so every SME vCPU already lacks ZT0 (checked in the table)")
        cfg = "sve+sme" if self.sve_offered else "sme"

        def observe():
            v = self.vcpu(cfg, pfr1_sme=1)
            v.set_reg(regs.SVCR, restore_plan.SVCR_ZA)
            out = f"ZT0 {_try(v.get_one_reg, regs.sme_zt(0))} ZA {_try(v.get_one_reg, regs.sme_za_row(0))}"
            listed = regs.sme_zt(0) in v.get_reg_list()
            return out + (" listed" if listed else "")
        self.check("5.zt0_needs_sme2", "§5", "with ID_AA64PFR1_EL1.SME = 1 ZT0 is ENOENT and unlisted, ZA works",
                   "ZT0 ENOENT ZA ok", observe)
        self._close()

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

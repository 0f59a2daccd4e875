"""The ABI page's §4 rules: vector-length sets (SVE_VLS, SME_VLS) read, cut and
refused, and finalisation (FINALIZE once, nothing before it, no re-INIT)."""
from __future__ import annotations

from ..arm64 import regs
from .._ffi import const
from ..errors import KvmError
from ..arm64.vec import KVM_ARM_VCPU_VEC, SVCR_ZA, vl_bytes
from .base import CheckerBase, _ename, _try


class VlsRules(CheckerBase):
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
            v.arm_vcpu_finalize(KVM_ARM_VCPU_VEC)
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
            # ZA is off on a new vCPU, and that is checked first: EBUSY, not EPERM (v12, §4)
            za = [regs.sme_za_row(0)] + ([regs.sme_zt(0)] if self.sme2 else [])
            for i in za:
                self.check(f"4.before_finalize.{regs.name(i)}.za0.{cfg}", sec,
                           f"{regs.name(i)} before FINALIZE with SVCR.ZA = 0 is EBUSY (ZA off comes first)",
                           "EBUSY", lambda i=i: _try(v.get_one_reg, i))

            def za_on(i):
                v.set_reg(regs.SVCR, 2)
                try:
                    return _try(v.get_one_reg, i)
                finally:
                    v.set_reg(regs.SVCR, 0)
            for i in za:
                self.check(f"4.before_finalize.{regs.name(i)}.za1.{cfg}", sec,
                           f"{regs.name(i)} before FINALIZE with SVCR.ZA = 1 is EPERM", "EPERM",
                           lambda i=i: za_on(i))
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
            vl = vl_bytes(self.sve_vqs)
            v.set_one_reg(regs.sve_z(0), b"\x5a" * 256)
            if "sme" in cfg:
                v.set_reg(regs.SVCR, SVCR_ZA)
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

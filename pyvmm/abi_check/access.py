"""The ABI page's §5 rules (and §3's SME system registers): which vector
registers each SVCR state exposes, at which sizes, and what changing SVCR does."""
from __future__ import annotations

import functools

from ..arm64 import regs, restore_plan
from ..errors import KvmError
from ..arm64.vec import SMFR0_FA64, SVCR_SM, SVCR_ZA, VecShape, sme_level, vl_bytes
from .base import FAIL, FPSR_AFTER_SM_CHANGE, STATES, CheckerBase, _ename, _try


class AccessRules(CheckerBase):
    # -- §5: the access table, for each SVCR state --
    def _expect(self, cfg: str, sm: int, za: int) -> dict:
        """The ABI page §5 table: expected outcome per register class."""
        sve, smecfg = "sve" in cfg.split("+"), "sme" in cfg.split("+")
        vl = vl_bytes(self.sme_vqs) if sm else (vl_bytes(self.sve_vqs) if sve else 0)
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
        svl_b = vl_bytes(self.sme_vqs) if smecfg else 0
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
                           functools.partial(self._len_probe, v, rid))
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
                        # v12 (21/29) checks the row before the slice (§4)
                        self.check(f"{tag}.ZA_row_svl_slice1", sec, f"{where}: ZA row {svl_b} slice 1 is "
                                   "EINVAL (the row is checked before the slice)", "EINVAL",
                                   lambda: _try(v.get_one_reg, regs.sme_za_row(svl_b, 1)))
                    self.check(f"{tag}.ZA_slice1", sec, f"{where}: ZA[0] slice 1 is ENOENT", "ENOENT",
                               lambda: _try(v.get_one_reg, regs.sme_za_row(0, 1)))
                    self.check(f"{tag}.ZT0", sec, f"{where}: ZT0 (" + ("SME2" if self.sme2 else "no SME2") + ")",
                               "ok 64B" if self.sme2 else "ENOENT", lambda: self._len_probe(v, regs.sme_zt(0)))
                else:
                    self.check(f"{tag}.ZA", sec, f"{where}: ZA row get and set are EBUSY", "EBUSY EBUSY",
                               lambda: _try(v.get_one_reg, regs.sme_za_row(0)) + " " +
                               _try(v.set_one_reg, regs.sme_za_row(0), bytes(256)))
                    if svl_b < 256:
                        # the row is checked before SVCR.ZA (v12 21/29, §4)
                        self.check(f"{tag}.ZA_row_svl", sec, f"{where}: ZA row {svl_b} (= SVL/8) is EINVAL "
                                   "with ZA off too", "EINVAL",
                                   lambda: _try(v.get_one_reg, regs.sme_za_row(svl_b)))
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
        shape = VecShape(
            sve="sve" in cfg.split("+"), sme=smecfg, svcr=(SVCR_SM if sm else 0) | (SVCR_ZA if za else 0),
            sve_vqs=self.sve_vqs, sme_vqs=self.sme_vqs if smecfg else (), fa64=self.fa64, sme2=self.sme2)
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
        # SMPRI_EL1 is never listed: it has no userspace state (v12, ABI page §3)
        sme_sys = {regs.SVCR, regs.SMCR_EL1, regs.TPIDR2_EL0, regs.SMIDR_EL1}
        have_sys = sme_sys & set(lst)
        if regs.SMPRI_EL1 in lst:
            problems.append("SMPRI_EL1 listed (it has no userspace state, §3)")
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
                v.set_reg(regs.SVCR, SVCR_SM | SVCR_ZA)
                out = [f"Z0 {self._len_probe(v, regs.sve_z(0))}", f"ZA {self._len_probe(v, regs.sme_za_row(svl_b - 1))}"]
                if svl_b < 256:
                    out.append(f"row{svl_b} {_try(v.get_one_reg, regs.sme_za_row(svl_b))}")
                    # v12 (21/29) checks the row before the slice (§4)
                    out.append(f"slice1 {_try(v.get_one_reg, regs.sme_za_row(svl_b, 1))}")
                rows = sum(1 for i in v.get_reg_list() if regs.decode(i).kind == "sme_za")
                out.append(f"{rows} rows listed")
                v.set_reg(regs.SVCR, 0)
                self._close()
                return " ".join(out)
            exp = f"Z0 ok {svl_b}B ZA ok {svl_b}B" + (f" row{svl_b} EINVAL slice1 EINVAL" if svl_b < 256 else "") + \
                f" {svl_b} rows listed"
            self.check(f"5.svl{128 * q}", "§4, §5",
                       f"SME_VLS cut at {128 * q} bits: streaming Z0 and ZA rows of {svl_b} bytes, {svl_b} rows"
                       + (f", row {svl_b} EINVAL at slices 0 and 1" if svl_b < 256 else ""),
                       exp, observe)

    # -- §5: SVCR side effects --
    def _svcr(self, cfg: str):
        sec = "§5"
        sve = "sve" in cfg.split("+")
        v = self.vcpu(cfg)
        self.check(f"5.{cfg}.svcr.reserved", sec, "SVCR with bit 2 or bit 63 set is EINVAL", "EINVAL EINVAL",
                   lambda: _try(v.set_reg, regs.SVCR, 4) + " " + _try(v.set_reg, regs.SVCR, 1 << 63))
        has_fpmr = _try(v.get_one_reg, regs.FPMR) == "ok"
        svl_b = vl_bytes(self.sme_vqs)

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
            v.set_reg(regs.SVCR, SVCR_ZA)
            v.set_one_reg(regs.sme_za_row(0), b"\x55" * 256)
            if self.sme2:
                v.set_one_reg(regs.sme_zt(0), b"\x66" * 64)
            v.set_reg(regs.SVCR, 0)
            v.set_reg(regs.SVCR, SVCR_ZA)
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
                v.set_reg(regs.SVCR, sm | SVCR_ZA)
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
        self.check("3.smpri", sec, "SMPRI_EL1 has no userspace state: unlisted, GET and SET are ENOENT",
                   "unlisted ENOENT ENOENT",
                   lambda: f"{'listed' if regs.SMPRI_EL1 in v.get_reg_list() else 'unlisted'} "
                           f"{_try(v.get_reg, regs.SMPRI_EL1)} {_try(v.set_reg, regs.SMPRI_EL1, 0)}")
        def tpidr2_reset():
            t2, t0 = v.get_reg(regs.TPIDR2_EL0), v.get_reg(regs.TPIDR_EL0)
            return "as TPIDR_EL0" if t2 == t0 else f"{t2:#x}, TPIDR_EL0 {t0:#x}"
        # v12 (16/29) resets it like TPIDR_EL0: UNKNOWN, i.e. KVM's reset pattern, not 0
        self.check("3.tpidr2.reset", sec, "TPIDR2_EL0 after KVM_ARM_VCPU_INIT is UNKNOWN: the value "
                   "TPIDR_EL0 resets to", "as TPIDR_EL0", tpidr2_reset)
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
                   "ok", lambda: "ok" if sme_level(v.get_reg(regs.ID_AA64PFR1_EL1)) in (1, 2) else
                   f"SME field {sme_level(v.get_reg(regs.ID_AA64PFR1_EL1))}")
        if self.sve_offered:
            self.check("3.pfr1_sme_hidden", sec, "ID_AA64PFR1_EL1.SME is 0 on a vCPU without SME", "0",
                       lambda: str(sme_level(self.vcpu("sve").get_reg(regs.ID_AA64PFR1_EL1))))

        def smfr0():
            w = self.vcpu(cfg, finalize=False)
            val = w.get_reg(regs.ID_AA64SMFR0_EL1)
            lower = val & ~SMFR0_FA64
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
            v.set_reg(regs.SVCR, SVCR_ZA)
            out = f"ZT0 {_try(v.get_one_reg, regs.sme_zt(0))} ZA {_try(v.get_one_reg, regs.sme_za_row(0))}"
            listed = regs.sme_zt(0) in v.get_reg_list()
            return out + (" listed" if listed else "")
        self.check("5.zt0_needs_sme2", "§5", "with ID_AA64PFR1_EL1.SME = 1 ZT0 is ENOENT and unlisted, ZA works",
                   "ZT0 ENOENT ZA ok", observe)
        self._close()

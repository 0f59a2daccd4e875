"""The save/restore side of the in-kernel vGICv3 (:class:`VgicState`), used
through :class:`pyvmm.machine.gic.VgicV3` (its ``save``, ``restore``,
``preset_config`` and ``learn_current``; the single-register accessors are
here, reached as ``VgicV3.state``): the whole
in-kernel GIC state (distributor, redistributors, CPU interfaces, line levels)
in and out as a JSON-serialisable dict, for machine snapshots and live
migration. The registers and attr encodings it uses are in
:mod:`pyvmm.machine.gic_regs`.

A module of its own so that booting a guest does not load it: ``pyvmm run``
creates, places and initialises the vGIC (pyvmm/machine/gic.py) and never saves
it (issue 13, item 5: start-up time).
"""
from __future__ import annotations

import errno
from .. import _threads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Tuple

from .._ffi import const, ffi
from ..errors import HostUnsupported, KvmError, UsageProblem
from .gic_regs import (CPU_SYSREGS_FIXED, DIST_BANKS, DIST_BANK_BY_NAME, GICD_CTLR, GICD_IIDR, GICD_IROUTER,
                       GICD_TYPER, GICD_TYPER_A3V,
                       GICR_CTLR, GICR_PENDBASER, GICR_PROPBASER, GICR_TYPER, GICR_TYPER_PLPIS,
                       GRP_CPU_SYSREGS, GRP_DIST, GRP_LEVEL_INFO, GRP_REDIST, REDIST_BANKS,
                       REDIST_BANK_BY_NAME, STATE_FORMAT, apr_count, dist_attr, line_level_attr,
                       mpidr_affinity, redist_attr, spi_words, sysreg_attr)


class VgicState:
    """The state side of one vGICv3 device: ``device`` (its
    :class:`pyvmm.kvm_device.KvmDevice`), ``ncpus`` vCPUs, and ``nr_irqs``, a
    callable reading GRP_NR_IRQS (:meth:`pyvmm.machine.gic.VgicV3.nr_irqs`).
    What one :meth:`preset_config` or :meth:`learn_current` learnt is kept
    here for the next :meth:`restore`."""

    def __init__(self, device, ncpus: int, nr_irqs):
        self.device = device
        self.ncpus = ncpus
        self.nr_irqs = nr_irqs
        self._preset: Dict[int, int] = {}  # distributor offset -> value preset_config() wrote
        # (attr group, attr) -> the value a fresh vGIC holds, read by
        # preset_config() for the next restore (None: everything is written)
        self._known: Optional[Dict[Tuple[int, int], int]] = None
        self._known_state: Optional[Dict] = None  # the same, as the state dict save() makes of it

    # -- single registers (the device-attr groups of arm-vgic-v3.rst) ------------

    def read_dist(self, offset: int) -> int:
        return self._io.get(GRP_DIST, dist_attr(offset))

    def write_dist(self, offset: int, value: int) -> None:
        if not self._holds(GRP_DIST, dist_attr(offset), value):
            self._io.set(GRP_DIST, dist_attr(offset), value)

    def read_redist(self, mpidr: int, offset: int) -> int:
        return self._io.get(GRP_REDIST, redist_attr(mpidr, offset))

    def write_redist(self, mpidr: int, offset: int, value: int) -> None:
        if not self._holds(GRP_REDIST, redist_attr(mpidr, offset), value):
            self._io.set(GRP_REDIST, redist_attr(mpidr, offset), value)

    def _holds(self, group: int, attr: int, value: int) -> bool:
        """Whether the register holds ``value`` already (known from
        :meth:`preset_config`), so that the restore under way skips its write."""
        known = self._known
        return known is not None and known.get((group, attr)) == value

    def _aff3(self) -> bool:
        """GICD_TYPER.A3V (read once): whether GICD_IROUTER<n>'s upper half holds anything."""
        a3v = self.__dict__.get("_a3v")
        if a3v is None:
            a3v = self._a3v = bool(self.read_dist(GICD_TYPER) & GICD_TYPER_A3V)
        return a3v

    @property
    def _io(self) -> "AttrIo32":
        io = self.__dict__.get("_attr_io")
        if io is None:
            io = self._attr_io = AttrIo32(self.device)
        return io

    def read_cpu_sysreg(self, mpidr: int, name: str) -> int:
        attr = sysreg_attr(mpidr, name)
        return self._io.note(GRP_CPU_SYSREGS, attr,
                             int(self.device.get_device_attr(GRP_CPU_SYSREGS, attr, ctype="uint64_t")))

    def write_cpu_sysreg(self, mpidr: int, name: str, value: int) -> None:
        attr = sysreg_attr(mpidr, name)
        if not self._holds(GRP_CPU_SYSREGS, attr, value):
            self.device.set_device_attr(GRP_CPU_SYSREGS, attr, value, ctype="uint64_t")

    def read_line_level(self, mpidr: int, intid: int) -> int:
        attr = line_level_attr(mpidr, intid)
        return self._io.note(GRP_LEVEL_INFO, attr,
                             int(self.device.get_device_attr(GRP_LEVEL_INFO, attr, ctype="uint32_t")))

    def write_line_level(self, mpidr: int, intid: int, value: int) -> None:
        attr = line_level_attr(mpidr, intid)
        if not self._holds(GRP_LEVEL_INFO, attr, value):
            self.device.set_device_attr(GRP_LEVEL_INFO, attr, value, ctype="uint32_t")

    def _read_redist64(self, mpidr: int, offset: int) -> int:
        return self.read_redist(mpidr, offset) | (self.read_redist(mpidr, offset + 4) << 32)

    def _write_redist64(self, mpidr: int, offset: int, value: int) -> None:
        self.write_redist(mpidr, offset, value & 0xFFFFFFFF)
        self.write_redist(mpidr, offset + 4, value >> 32)

    # -- whole-GIC save / restore --------------------------------------------------
    def save(self, mpidrs: List[int]) -> Dict:
        """The whole vGIC state as a JSON-serialisable dict (str keys; int, str,
        list and dict values).

        ``mpidrs`` is each vCPU's MPIDR_EL1 in index order
        (``pyvmm.vcpu.mpidr_of``). Every vCPU must be stopped — not inside
        KVM_RUN — for the whole call: KVM refuses the accesses with EBUSY
        otherwise (reported as a UsageProblem), and a vCPU running between two
        reads would make the state inconsistent.

        Pending bits are the *latches* (what ISPENDR writes set), not what the
        guest would read; the input line levels are saved apart (LEVEL_INFO),
        as arm-vgic-v3.rst asks, since the state of a level-triggered
        interrupt is the pair of both.
        """
        mpidrs = self._check_mpidrs(mpidrs, "save")
        try:
            return self._save(mpidrs)
        except KvmError as e:
            raise _busy_or(e, "save") from None

    def restore(self, state: Dict, mpidrs: List[int]) -> None:
        """Load a :meth:`save` dict into this (fresh) vGIC.

        Call on a new vGIC after :meth:`pyvmm.machine.gic.VgicV3.init` (CTRL_INIT) and after every
        vCPU's registers, MPIDR_EL1 included, were restored: KVM finds the
        redistributor and CPU interface of an access, and the target vCPU of
        an SPI route, by MPIDR affinity. No vCPU may be inside KVM_RUN.
        ``mpidrs`` as for :meth:`save`; they must have the saved affinities.
        Raises UsageProblem, before writing anything, when the state does not
        fit this vGIC (NR_IRQS, vCPU count, MPIDRs, missing or malformed keys).
        """
        mpidrs = self._check_mpidrs(mpidrs, "restore")
        validate_state(state, self.nr_irqs(), mpidrs)
        try:
            self._restore(state, mpidrs)
        except KvmError as e:
            raise _busy_or(e, "restore") from None

    def preset_config(self, state: Dict, mpidrs: List[int]) -> None:
        """Write the distributor's per-SPI configuration of ``state`` (a
        :meth:`save` dict: GICD_IIDR, then groups, routes, trigger
        configuration, priorities, group modifiers) into this fresh vGIC now,
        and let the next :meth:`restore` skip the writes of those registers
        that would write the same value again. These registers only hold a
        value (no pending, active or enable side effect), so a later restore
        leaves the vGIC as a plain one would. A live migration's destination
        presets the state it checked while memory is copied, and restores the
        final state in the pause (the guest rarely changes its routing).
        Then every register the restore writes is read (as :meth:`save`
        reads it), and the next restore skips a write of the value a
        register holds (a set/clear pair when its set register holds the
        value): exact, as long as nothing else changes this vGIC in between
        (no vCPU runs, no interrupt line is driven: the destination has run
        nothing yet). Same conditions and refusals as :meth:`restore`."""
        mpidrs = self._check_mpidrs(mpidrs, "restore")
        validate_state(state, self.nr_irqs(), mpidrs)
        self._preset = {}
        written: Dict[int, int] = {}
        try:
            self._write_iidr(state["dist"]["GICD_IIDR"])
            self._write_dist_config(state, {}, written)
        except KvmError as e:
            raise _busy_or(e, "restore") from None
        self.learn_current(mpidrs)
        self._preset = written

    def learn_current(self, mpidrs: List[int]) -> None:
        """Read every register the next :meth:`restore` writes (as
        :meth:`save` reads it), so that it skips a write of the value a
        register holds (a set/clear pair when its set register holds it):
        exact as long as nothing changes this vGIC in between (no vCPU runs,
        no interrupt line is driven). A live migration's destination that
        has restored the state it checked learns it so, and the pause then
        writes only what the guest changed since."""
        mpidrs = self._check_mpidrs(mpidrs, "restore")
        known: Dict[Tuple[int, int], int] = {}
        self._io.record = known
        try:
            state = self._save(mpidrs)
        except KvmError as e:
            raise _busy_or(e, "restore") from None
        finally:
            self._io.record = None
        self._known = known
        self._known_state = state

    def _write_dist_config(self, state: Dict, preset: Dict[int, int], written: Dict[int, int],
                           known: Optional[Dict] = None) -> None:
        """Groups, routes, then trigger configuration, priorities and group
        modifiers (restore order step 2), skipping an offset whose value
        ``preset`` holds; each value is recorded in ``written`` (not those of
        a bank or the routes equal to ``known``'s, the distributor as
        learn_current() read it: skipped whole)."""
        dist, nr = state["dist"], state["nr_irqs"]

        def put(offset: int, value: int) -> None:
            if preset.get(offset) != value:
                self.write_dist(offset, value)
            written[offset] = value
        for name in ("IGROUPR",):
            if known is None or known[name] != dist[name]:
                self._write_dist_bank(name, dist[name], nr, put)
        aff3 = self._aff3()
        if known is None or known["IROUTER"] != dist["IROUTER"]:
            for intid, route in zip(range(32, nr), dist["IROUTER"]):
                put(GICD_IROUTER + 8 * intid, route & 0xFFFFFFFF)
                if aff3 or route >> 32:  # without Aff3 a zero upper half is what the vGIC holds
                    put(GICD_IROUTER + 8 * intid + 4, route >> 32)
        for name in ("ICFGR", "IPRIORITYR", "IGRPMODR"):
            if known is None or known[name] != dist[name]:
                self._write_dist_bank(name, dist[name], nr, put)

    def _write_iidr(self, iidr: int) -> None:
        self.__dict__.get("_fixed_values", {}).pop((GRP_DIST, dist_attr(GICD_IIDR)), None)  # read again
        try:
            self.write_dist(GICD_IIDR, iidr)
        except KvmError as e:
            if e.errno != errno.EINVAL:
                raise
            raise HostUnsupported(f"vGIC state does not fit: this host's KVM does not implement the saved "
                                  f"GICD_IIDR {iidr:#x} (its own is {self.read_dist(GICD_IIDR):#x})")

    def _check_mpidrs(self, mpidrs: Sequence[int], what: str) -> List[int]:
        mpidrs = list(mpidrs)
        if len(mpidrs) != self.ncpus:
            raise UsageProblem(f"vGIC {what}: {len(mpidrs)} MPIDRs given for a vGIC with {self.ncpus} vCPUs")
        for i, m in enumerate(mpidrs):
            if not isinstance(m, int) or isinstance(m, bool) or not 0 <= m < (1 << 64):
                raise UsageProblem(f"vGIC {what}: MPIDR of vCPU {i} is not a 64-bit integer: {m!r}")
        return mpidrs

    def _fixed(self, group: int, attr: int) -> int:
        """A register neither the guest nor a restore's other writes change
        once the vGIC is initialised (GRP_NR_IRQS, GICD_IIDR, GICR_TYPER):
        read the first time, then known (still recorded for
        :meth:`learn_current`). A live migration's final save in the pause
        so reads only what the guest can change."""
        known = self.__dict__.setdefault("_fixed_values", {})
        value = known.get((group, attr))
        if value is None:
            value = known[(group, attr)] = (self.nr_irqs() if group == const("KVM_DEV_ARM_VGIC_GRP_NR_IRQS")
                                            else self._io.get(group, attr))
        return self._io.note(group, attr, value)

    def _save_plan(self, nr: int, mpidrs: List[int]) -> Tuple:
        """The attrs :meth:`_save` reads, computed once for these NR_IRQS
        and MPIDRs (building them cost about as much as a tenth of the
        ioctls under emulation)."""
        key = (nr, tuple(mpidrs))
        plan = self.__dict__.get("_plan")
        if plan is not None and plan[0] == key:
            return plan
        banks = [(name, [dist_attr(set_off + 4 * k) for k in spi_words(nr, bpi)])
                 for name, set_off, _clear, bpi in DIST_BANKS]
        # 64-bit registers go through this interface as two 32-bit halves; a
        # route's upper half (Aff3) only where the vGIC has Aff3 (GICD_TYPER.A3V,
        # which KVM's lacks: the half is RAZ/WI there, so the value is the same).
        aff3 = self._aff3()
        routes = [dist_attr(GICD_IROUTER + 8 * intid + h) for intid in range(32, nr) for h in ((0, 4) if aff3 else (0,))]
        # SPI line levels are global; KVM only needs a valid vCPU in the attr.
        levels = [line_level_attr(mpidrs[0], intid) for intid in range(32, nr, 32)]
        cpus = []
        for m in mpidrs:
            aprs = {n: [sysreg_attr(m, f"ICC_AP{g}R{i}_EL1") for g in (0, 1) for i in range(n)] for n in (1, 2, 4)}
            cpus.append((m, redist_attr(m, GICR_CTLR), redist_attr(m, GICR_TYPER),
                         [(name, [redist_attr(m, set_off + 4 * k) for k in range(nwords)])
                          for name, set_off, _clear, nwords in REDIST_BANKS],
                         line_level_attr(m, 0), [sysreg_attr(m, name) for name in CPU_SYSREGS_FIXED], aprs))
        plan = self._plan = (key, banks, aff3, routes, levels, cpus)
        return plan

    def _save(self, mpidrs: List[int]) -> Dict:
        io = self._io
        nr = self._fixed(const("KVM_DEV_ARM_VGIC_GRP_NR_IRQS"), 0)
        _key, banks, aff3, routes, levels, cpus = self._save_plan(nr, mpidrs)
        dist: Dict[str, Any] = {"GICD_CTLR": io.get(GRP_DIST, dist_attr(GICD_CTLR)),
                                "GICD_IIDR": self._fixed(GRP_DIST, dist_attr(GICD_IIDR))}
        for name, attrs in banks:
            dist[name] = io.get_many(GRP_DIST, attrs)
        if aff3:
            halves = io.get_many(GRP_DIST, routes)
            dist["IROUTER"] = [lo | (hi << 32) for lo, hi in zip(halves[::2], halves[1::2])]
        else:
            dist["IROUTER"] = io.get_many(GRP_DIST, routes)
        line_level = io.get_many(GRP_LEVEL_INFO, levels)
        redist, cpu = [], []
        for m, ctlr, typer, redist_banks, ppi_levels, sysreg_attrs, aprs in cpus:
            r: Dict[str, Any] = {"GICR_CTLR": io.get(GRP_REDIST, ctlr)}
            # PROPBASER/PENDBASER only mean something with LPIs (an ITS);
            # without, KVM ignores GICR_CTLR.EnableLPIs and nothing reads them.
            if self._fixed(GRP_REDIST, typer) & GICR_TYPER_PLPIS:
                r["GICR_PROPBASER"] = self._read_redist64(m, GICR_PROPBASER)
                r["GICR_PENDBASER"] = self._read_redist64(m, GICR_PENDBASER)
            for name, attrs in redist_banks:
                r[name] = io.get_many(GRP_REDIST, attrs)
            r["LINE_LEVEL"] = io.get(GRP_LEVEL_INFO, ppi_levels)  # PPIs (SGI bits RAZ)
            redist.append(r)
            c: Dict[str, Any] = dict(zip(CPU_SYSREGS_FIXED, io.get_many64(GRP_CPU_SYSREGS, sysreg_attrs)))
            n_apr = apr_count(c["ICC_CTLR_EL1"])
            values = io.get_many64(GRP_CPU_SYSREGS, aprs[n_apr])
            c["ICC_AP0R"], c["ICC_AP1R"] = values[:n_apr], values[n_apr:]
            cpu.append(c)
        return {"format": STATE_FORMAT, "nr_irqs": nr, "nr_vcpus": len(mpidrs), "mpidrs": mpidrs,
                "dist": dist, "line_level": line_level, "redist": redist, "cpu": cpu}

    def _restore(self, state: Dict, mpidrs: List[int]) -> None:
        # RESTORE ORDER (arm-vgic-v3.rst and the KVM code behind it):
        # 1. GICD_IIDR before any other register: it selects the implementation
        #    revision (e.g. whether groups are guest-configurable) the rest is
        #    interpreted under. KVM refuses (EINVAL) an IIDR other than its own
        #    except for the Revision field.
        # 2. Per interrupt: group, route, configuration and priority before the
        #    pending state, so a pending interrupt is queued with its final
        #    edge/level meaning, on its final target vCPU, at its final priority.
        #    KVM turns an IROUTER affinity into a vCPU when it is written, so the
        #    vCPUs' MPIDR_EL1 must be restored before this is called.
        # 3. Pending: writes to ISPENDR/GICR_ISPENDR0 from userspace set the
        #    latch to exactly the written bits (set and clear); ICPENDR is RAZ/WI
        #    from userspace, so it is not written. For a level-triggered
        #    interrupt the latch is only half of the state: the input line level
        #    is restored through LEVEL_INFO (written first; KVM does not care
        #    about the order of these two).
        # 4. Enable and active are set/clear register pairs: clear what the saved
        #    state has clear (ICENABLER/ICACTIVER) then set the rest, as a fresh
        #    vGIC is not all-zero (KVM resets SGIs to enabled).
        # 5. Redistributor: PROPBASER/PENDBASER before GICR_CTLR.EnableLPIs (KVM
        #    ignores base writes once LPIs are enabled).
        # 6. CPU interface: ICC_SRE_EL1 first; ICC_CTLR_EL1 before ICC_APxRn
        #    (its PRIbits sets how many APRs exist) and before ICC_BPR1_EL1 (with
        #    CBPR set, BPR1 is an alias of BPR0 and KVM ignores the write).
        # 7. GICD_CTLR (the distributor enable) right after GICD_IIDR, before
        #    any pending, level or enable state: KVM puts a pending interrupt
        #    on its target vCPU's list only when that state is written while
        #    the distributor is enabled (vgic_queue_irq_unlock asks the target
        #    oracle, which answers "nobody" while it is disabled), and enabling
        #    the distributor later does not look for interrupts already pending.
        #    Written last, a level interrupt pending at the snapshot (a virtio
        #    completion) was never delivered after restore.
        # (A preset_config() before wrote step 2's distributor registers and
        # read every register: a write of the value a register holds is skipped.)
        preset, self._preset = self._preset, {}
        known, self._known_state = self._known_state, None
        if known is not None and (known["nr_irqs"], len(known["redist"])) != (state["nr_irqs"], len(state["redist"])):
            known = None
        try:
            self._restore_steps(state, mpidrs, preset, known)
        finally:
            self._known = None  # good for one restore

    def _restore_steps(self, state: Dict, mpidrs: List[int], preset: Dict[int, int],
                       known: Optional[Dict] = None) -> None:
        # ``known``: the state learn_current() read (what every register holds):
        # a part equal to it is skipped whole, as each of its writes would be
        # (_holds), without looking at its registers one by one.
        def held(part: Any, *path: Any) -> bool:
            if known is None:
                return False
            k: Any = known
            for p in path:
                k = k[p]
            return k == part
        dist, nr = state["dist"], state["nr_irqs"]
        self._write_iidr(dist["GICD_IIDR"])
        self.write_dist(GICD_CTLR, dist["GICD_CTLR"])  # step 7, see above
        for i, m in enumerate(mpidrs):
            r = state["redist"][i]
            if held(r, "redist", i):
                continue
            if "GICR_PROPBASER" in r:
                self._write_redist64(m, GICR_PROPBASER, r["GICR_PROPBASER"])
                self._write_redist64(m, GICR_PENDBASER, r["GICR_PENDBASER"])
            for name in ("IGROUPR0", "ICFGR", "IPRIORITYR", "IGRPMODR0"):
                self._write_redist_bank(m, name, r[name])
            self._write_redist_bank(m, "ISENABLER0", r["ISENABLER0"])
            self.write_line_level(m, 0, r["LINE_LEVEL"])
            self._write_redist_bank(m, "ISPENDR0", r["ISPENDR0"])
            self._write_redist_bank(m, "ISACTIVER0", r["ISACTIVER0"])
            self.write_redist(m, GICR_CTLR, r["GICR_CTLR"])
        self._write_dist_config(state, preset, {}, None if known is None else known["dist"])
        if not held(dist["ISENABLER"], "dist", "ISENABLER"):
            self._write_dist_bank("ISENABLER", dist["ISENABLER"], nr)
        if not held(state["line_level"], "line_level"):
            for intid, word in zip(range(32, nr, 32), state["line_level"]):
                self.write_line_level(mpidrs[0], intid, word)
        for name in ("ISPENDR", "ISACTIVER"):
            if not held(dist[name], "dist", name):
                self._write_dist_bank(name, dist[name], nr)
        for i, m in enumerate(mpidrs):
            c = state["cpu"][i]
            if held(c, "cpu", i):
                continue
            self.write_cpu_sysreg(m, "ICC_SRE_EL1", c["ICC_SRE_EL1"])
            try:
                self.write_cpu_sysreg(m, "ICC_CTLR_EL1", c["ICC_CTLR_EL1"])
            except KvmError as e:
                if e.errno != errno.EINVAL:
                    raise
                raise HostUnsupported(f"vGIC state does not fit: vCPU {i}: this host's GIC CPU interface cannot "
                                      f"take the saved ICC_CTLR_EL1 {c['ICC_CTLR_EL1']:#x} (more priority or ID "
                                      f"bits, or other SEIS/A3V, than the host's)")
            for name in ("ICC_PMR_EL1", "ICC_BPR0_EL1", "ICC_BPR1_EL1"):
                self.write_cpu_sysreg(m, name, c[name])
            for n, value in enumerate(c["ICC_AP0R"]):
                self.write_cpu_sysreg(m, f"ICC_AP0R{n}_EL1", value)
            for n, value in enumerate(c["ICC_AP1R"]):
                self.write_cpu_sysreg(m, f"ICC_AP1R{n}_EL1", value)
            for name in ("ICC_IGRPEN0_EL1", "ICC_IGRPEN1_EL1"):
                self.write_cpu_sysreg(m, name, c[name])

    def _write_dist_bank(self, name: str, words: List[int], nr: int, put=None) -> None:
        set_off, clear_off, bpi = DIST_BANK_BY_NAME[name]
        put = put or self.write_dist
        for k, value in zip(spi_words(nr, bpi), words):
            if clear_off is not None:
                if self._holds(GRP_DIST, dist_attr(set_off + 4 * k), value):
                    continue  # the pair would leave it as it is
                put(clear_off + 4 * k, ~value & 0xFFFFFFFF)
            put(set_off + 4 * k, value)

    def _write_redist_bank(self, mpidr: int, name: str, words: List[int]) -> None:
        set_off, clear_off, _n = REDIST_BANK_BY_NAME[name]
        for k, value in enumerate(words):
            if clear_off is not None:
                if self._holds(GRP_REDIST, redist_attr(mpidr, set_off + 4 * k), value):
                    continue  # the pair would leave it as it is
                self.write_redist(mpidr, clear_off + 4 * k, ~value & 0xFFFFFFFF)
            self.write_redist(mpidr, set_off + 4 * k, value)


class AttrIo32:
    """KVM_{GET,SET}_DEVICE_ATTR on one device with the requests prepared
    (:meth:`pyvmm._fd.KvmFd.prepare_raw`: the ioctl called straight from the
    loops here) and one attribute struct and value reused (under a lock): a
    whole vGIC save or restore is hundreds of accesses, and building both
    per access cost more than the ioctl under emulation (a live migration
    does one of each while the guest is stopped). Values are 32 bits but for
    :meth:`get_many64` (the CPU interface's system registers)."""

    def __init__(self, device):
        self._device = device
        self._get = device.prepare_raw("KVM_GET_DEVICE_ATTR")
        self._set = device.prepare_raw("KVM_SET_DEVICE_ATTR")
        self._value = ffi.new("uint32_t *")
        self._attr = ffi.new("struct kvm_device_attr *")
        self._attr.addr = int(ffi.cast("uintptr_t", self._value))
        self._value64 = ffi.new("uint64_t *")
        self._attr64 = ffi.new("struct kvm_device_attr *")
        self._attr64.addr = int(ffi.cast("uintptr_t", self._value64))
        self._lock = _threads.Lock()
        self.record: Optional[Dict[Tuple[int, int], int]] = None  # when set, every value read lands here

    def note(self, group: int, attr: int, value: int) -> int:
        """``value``, read from (group, attr), recorded when :attr:`record` is set."""
        if self.record is not None:
            self.record[(group, attr)] = value
        return value

    def get_many(self, group: int, attrs: Sequence[int]) -> List[int]:
        """:meth:`get` of each of ``attrs`` (one lock hold, no Python call between the loop and the kernel)."""
        return self._get_many(group, attrs, self._attr, self._value)

    def get_many64(self, group: int, attrs: Sequence[int]) -> List[int]:
        """:meth:`get_many` of 64-bit values."""
        return self._get_many(group, attrs, self._attr64, self._value64)

    def _get_many(self, group: int, attrs: Sequence[int], a, value) -> List[int]:
        out: List[int] = []
        append = out.append
        with self._lock:
            call, fd, number = self._get
            a.group = group
            for attr in attrs:
                a.attr = attr
                if call(fd, number, a) < 0:
                    raise self._device.error("KVM_GET_DEVICE_ATTR", ffi.errno)
                append(value[0])
        if self.record is not None:
            self.record.update(((group, attr), v) for attr, v in zip(attrs, out))
        return out

    def get(self, group: int, attr: int) -> int:
        return self.get_many(group, (attr,))[0]

    def set(self, group: int, attr: int, value: int) -> None:
        with self._lock:
            call, fd, number = self._set
            self._attr.group, self._attr.attr = group, attr
            self._value[0] = value
            if call(fd, number, self._attr) < 0:
                raise self._device.error("KVM_SET_DEVICE_ATTR", ffi.errno)


def _busy_or(e: KvmError, what: str) -> Exception:
    if e.errno == errno.EBUSY:
        return UsageProblem(f"vGIC {what}: a vCPU is inside KVM_RUN ({e.message})",
                            "stop every vCPU before saving or restoring the vGIC")
    return e


# ---- validating a saved state ---------------------------------------------------
_TOP_KEYS = ("format", "nr_irqs", "nr_vcpus", "mpidrs", "dist", "line_level", "redist", "cpu")


def validate_state(state: Any, nr_irqs: int, mpidrs: Sequence[int]) -> None:
    """Raise UsageProblem (one line, naming the first problem) unless
    ``state`` is a complete :meth:`VgicState.save` dict for a vGIC with
    ``nr_irqs`` interrupts and vCPUs with these MPIDRs (by affinity). Read with
    the one :class:`~pyvmm.devices.state.StateReader` strictness; the
    section's version is the ``/N`` of its ``format``."""
    from ..devices.state import StateReader  # loaded to read a state, not to run (start-up time)

    r = StateReader("vGIC", state, _TOP_KEYS)
    if r.str("format") != STATE_FORMAT:
        raise r.fail(f"format is {state['format']!r}, expected {STATE_FORMAT!r}")
    saved_nr = r.uint("nr_irqs", 32)
    if saved_nr != nr_irqs:
        raise r.fail(f"saved with NR_IRQS {saved_nr}, this vGIC has {nr_irqs}")
    n = r.uint("nr_vcpus", 32)
    if n != len(mpidrs):
        raise r.fail(f"saved with {n} vCPUs, this VM has {len(mpidrs)}")
    for i, (a, b) in enumerate(zip(r.words("mpidrs", n, 64), mpidrs)):
        if mpidr_affinity(a) != mpidr_affinity(b):
            raise r.fail(f"vCPU {i} has MPIDR {b:#x} but the state was saved with {a:#x} "
                         f"(restore the vCPUs' MPIDR_EL1 first)")
    dist = r.nested("dist", ("GICD_CTLR", "GICD_IIDR", "IROUTER") + tuple(b[0] for b in DIST_BANKS))
    for key in ("GICD_CTLR", "GICD_IIDR"):
        dist.uint(key, 32)
    for name, _s, _c, bpi in DIST_BANKS:
        dist.words(name, len(spi_words(nr_irqs, bpi)), 32)
    dist.words("IROUTER", nr_irqs - 32, 64)
    r.words("line_level", (nr_irqs - 32) // 32, 32)
    r.list("redist", n)
    r.list("cpu", n)
    for i in range(n):
        red = r.nested("redist", ("GICR_CTLR", "LINE_LEVEL") + tuple(b[0] for b in REDIST_BANKS),
                       optional=("GICR_PROPBASER", "GICR_PENDBASER"), index=i)
        red.uint("GICR_CTLR", 32)
        if red.has("GICR_PROPBASER") != red.has("GICR_PENDBASER"):
            raise red.fail("has only one of GICR_PROPBASER and GICR_PENDBASER")
        for key in ("GICR_PROPBASER", "GICR_PENDBASER"):
            if red.has(key):
                red.uint(key, 64)
        for name, _s, _c, nwords in REDIST_BANKS:
            red.words(name, nwords, 32)
        red.uint("LINE_LEVEL", 32)
        c = r.nested("cpu", CPU_SYSREGS_FIXED + ("ICC_AP0R", "ICC_AP1R"), index=i)
        for name in CPU_SYSREGS_FIXED:
            c.uint(name, 64)
        n_apr = apr_count(c.state["ICC_CTLR_EL1"])
        for name in ("ICC_AP0R", "ICC_AP1R"):
            c.words(name, n_apr, 64)

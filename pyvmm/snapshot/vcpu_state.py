"""Save and restore one vCPU's complete state.

Saved: every id ``KVM_GET_REG_LIST`` returns (sized from E2BIG) with its
bytes, the init features, the SVE/SME vector-length sets, SVCR, MP state and
vCPU events. Restore follows the order the SME ABI forces (ABI page §6),
computed from the *saved* SVCR, never from the destination's register list
(a fresh vCPU has SVCR = 0, so its list lacks ZA/ZT0 and has the wrong Z/P
sizes).
"""
from __future__ import annotations

import base64
import operator
import struct
import time
from .._record import field, record
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..arm64 import regs, restore_plan, sysregs
from ..arm64.vec import KVM_ARM_VCPU_SVE, KVM_ARM_VCPU_VEC, SVCR_ZA, VecShape
from ..devices.state import StateReader
from ..errors import HostUnsupported, KvmError, UsageProblem



# The manifest fields of a saved vCPU (VcpuState.to_json).
_JSON_KEYS = ("index", "features", "sve_vls", "sme_vls", "svcr", "mp_state", "events", "saved_at_ns",
              "register_count")


@record
class VcpuState:
    index: int
    features: List[int]
    sve_vls: Optional[List[int]] = None
    sme_vls: Optional[List[int]] = None
    svcr: int = 0
    registers: List[Tuple[int, bytes]] = field(default_factory=list)
    mp_state: int = 0
    events: bytes = b""
    saved_at_ns: int = 0  # CLOCK_REALTIME when saved, for the --clock policy

    def to_json(self) -> Dict:
        return {"index": self.index, "features": self.features, "sve_vls": self.sve_vls,
                "sme_vls": self.sme_vls, "svcr": self.svcr, "mp_state": self.mp_state,
                "events": base64.b64encode(self.events).decode(), "saved_at_ns": self.saved_at_ns,
                "register_count": len(self.registers)}

    def registers_blob(self) -> bytes:
        out = bytearray()
        for reg_id, value in self.registers:
            out += reg_id.to_bytes(8, "little") + value
        return bytes(out)

    @classmethod
    def from_json(cls, meta: Dict, blob: Union[bytes, memoryview],
                  layout: Optional["BlobLayout"] = None) -> "VcpuState":
        """The saved vCPU from its manifest entry (read with the one
        StateReader strictness, docs/snapshot-format.md) and its register
        blob. ``layout``: the blob expected (a later state of a vCPU whose
        earlier one was read), decoded at once when it is that one."""
        r = StateReader("vCPU", meta, _JSON_KEYS)
        state = cls(r.int("index", 0, 1 << 16), r.ints("features", 0, 7 * 32 - 1),
                    r.ints("sve_vls", 1, 512, nullable=True), r.ints("sme_vls", 1, 512, nullable=True),
                    r.uint("svcr", 64), [], r.uint("mp_state", 32), r.bytes("events", 1 << 16),
                    r.int("saved_at_ns", 0, (1 << 63) - 1))
        known = layout.decode(blob) if layout is not None else None
        if known is not None:
            state.registers = known
        pos = 0 if known is None else len(blob)
        while pos < len(blob):
            if pos + 8 > len(blob):
                raise ValueError("register blob ends inside an id")
            reg_id = int.from_bytes(blob[pos:pos + 8], "little")
            size = regs.size_of(reg_id)
            if pos + 8 + size > len(blob):
                raise ValueError(f"register blob ends inside {regs.name(reg_id)}")
            state.registers.append((reg_id, bytes(blob[pos + 8:pos + 8 + size])))
            pos += 8 + size
        if len(state.registers) != r.int("register_count", 0, 1 << 32):
            raise ValueError("register count does not match the manifest")
        return state

    def register_map(self) -> Dict[int, bytes]:
        return dict(self.registers)


class BlobLayout:
    """The register blob of one register list (ids in this order, each
    followed by its value): :meth:`decode` checks a blob's ids and cuts its
    values in two struct calls, where the general reader walks it register
    by register."""

    def __init__(self, ids: Sequence[int]):
        self.ids = tuple(ids)
        sizes = [regs.size_of(i) for i in self.ids]
        self._ids = struct.Struct("<" + "".join(f"Q{n}x" for n in sizes))
        self._values = struct.Struct("<" + "".join(f"8x{n}s" for n in sizes))

    def pairs(self, blob: Union[bytes, memoryview]) -> List[Tuple[int, bytes]]:
        """The (id, value) pairs of a blob known to be of this layout (no check)."""
        return list(zip(self.ids, self._values.unpack(blob)))

    def decode(self, blob: Union[bytes, memoryview]) -> Optional[List[Tuple[int, bytes]]]:
        """The (id, value) pairs of ``blob``, or None when it is not of this layout."""
        if len(blob) != self._ids.size or self._ids.unpack(blob) != self.ids:
            return None
        return list(zip(self.ids, self._values.unpack(blob)))


SaveCache = Dict[Tuple[Any, ...], Any]


def save(vcpu, features: List[int], sme_bit: Optional[int] = None, cache: Optional[SaveCache] = None) -> VcpuState:
    """The vCPU's state (it must be stopped); see :func:`save_with_blob`."""
    return save_with_blob(vcpu, features, sme_bit, cache)[0]


def save_with_blob(vcpu, features: List[int], sme_bit: Optional[int] = None,
                   cache: Optional[SaveCache] = None) -> Tuple[VcpuState, bytes]:
    """The vCPU's state (it must be stopped) and its register blob
    (:meth:`VcpuState.registers_blob`, read as it is: :class:`_Reader`).
    Every register is read through one prepared batch. ``cache`` (a dict
    the caller keeps across saves of the same vCPUs, e.g. a live
    migration's two) keeps the register list (``KVM_GET_REG_LIST``) and,
    per list, the batch with the values of the registers only userspace
    can change (:func:`fixed_by_userspace`: ID registers, vector-length
    sets), read by the first save: a later save reads only the others. The
    list depends on nothing the guest can change but SVCR
    (docs/kvm-sme-abi.md §5-6: it follows the *current* SVCR; features and
    vector lengths are fixed once finalised), so it is kept per SVCR, read
    first on an SME vCPU."""
    has_sme = sme_bit is not None and sme_bit in features
    svcr = vcpu.get_reg(regs.SVCR) if has_sme else 0
    list_key = ("reg_list", vcpu.index, svcr)
    ids = cache.get(list_key) if cache is not None else None
    if ids is None:
        ids = vcpu.get_reg_list()
        if cache is not None:
            cache[list_key] = ids
    key = (vcpu.index, tuple(ids))
    reader = cache.get(key) if cache is not None else None
    if reader is None:
        reader = _Reader(vcpu, ids)
        if cache is not None:
            cache[key] = reader
    else:
        reader.read_live()
    blob = reader.batch.framed_bytes()
    state = VcpuState(vcpu.index, list(features), reader.sve_vls, reader.sme_vls, svcr, reader.layout.pairs(blob),
                      vcpu.get_mp_state(), vcpu.get_vcpu_events(), time.time_ns())
    return state, blob


class _Reader:
    """One vCPU's registers of one register list, read into a framed batch
    (:class:`pyvmm.vcpu.OneRegBatch`: the buffer is the register blob): all
    of them now, by :meth:`read_live` those the guest can change. The
    vector-length sets are kept apart (decoded, not in the blob)."""

    def __init__(self, vcpu, ids: Sequence[int]):
        self.sve_vls = self.sme_vls = None
        for reg_id in ids:
            if reg_id == regs.SVE_VLS:
                self.sve_vls = regs.vls_decode(vcpu.get_one_reg(reg_id))
            elif reg_id == regs.SME_VLS:
                self.sme_vls = regs.vls_decode(vcpu.get_one_reg(reg_id))
        blob_ids = [i for i in ids if i not in (regs.SVE_VLS, regs.SME_VLS)]
        self.layout = BlobLayout(blob_ids)
        self.batch = vcpu.one_reg_batch(blob_ids, framed=True)
        self.batch.read()
        self.live = [k for k, i in enumerate(blob_ids) if not fixed_by_userspace(i)]

    def read_live(self) -> None:
        self.batch.read(self.live)


def fixed_by_userspace(reg_id: int) -> bool:
    """Whether only userspace (KVM_SET_ONE_REG) can change the register, never
    the guest: the ID registers (the guest's writes to them trap as
    undefined), the SVE/SME vector-length sets (fixed at finalisation,
    ABI page §4), the CCSIDR values KVM presents (the demultiplexed ids: the
    guest selects one with CSSELR and reads it), the PSCI version and the
    hypercall bitmaps (KVM_REG_ARM_STD_BMAP and its kin: set by userspace
    before the first KVM_RUN, EBUSY after). Read once, they keep their value
    while the guest runs. (Not the other firmware registers: older kernels
    let the guest switch its SSBD mitigation, SMCCC_ARCH_WORKAROUND_2, with a
    hypercall.)"""
    coproc = regs.coproc_of(reg_id)
    if coproc in (regs.COPROC_DEMUX, regs.COPROC_FW_FEAT_BMAP) or reg_id == regs.FW_PSCI_VERSION:
        return True
    return reg_id in (regs.SVE_VLS, regs.SME_VLS) or _is_id_register(reg_id)


def _is_id_register(reg_id: int) -> bool:
    if regs.coproc_of(reg_id) != regs.COPROC_SYSREG:  # cheap first test: most ids are not system registers
        return False
    d = regs.decode(reg_id)
    return d.kind == "sysreg" and d.encoding is not None and (sysregs.is_id_space(d.encoding) or d.name in (
        "SMIDR_EL1", "MIDR_EL1", "REVIDR_EL1", "CTR_EL0", "CLIDR_EL1", "AIDR_EL1"))


def vector_shape(state: VcpuState, sme_bit: Optional[int]) -> Optional[VecShape]:
    """The restore planner's view of a saved vCPU, or None without SVE/SME."""
    sve = KVM_ARM_VCPU_SVE in state.features
    sme = sme_bit is not None and sme_bit in state.features
    if not (sve or sme):
        return None
    values = state.register_map()

    def value(reg_id: int) -> int:
        raw = values.get(reg_id)
        return int.from_bytes(raw, "little") if raw else 0

    return VecShape.from_id_regs(state.sve_vls or (), state.sme_vls or (), value(regs.ID_AA64PFR1_EL1),
                                 value(regs.ID_AA64SMFR0_EL1), sve=sve, sme=sme, svcr=state.svcr,
                                 fpmr=regs.FPMR in values, sme_bit=sme_bit)


def restore_order(state: VcpuState, sme_bit: Optional[int] = None) -> List[Tuple[str, List[int]]]:
    """(reason, ids) in write order after KVM_ARM_VCPU_INIT: ID registers and
    vector lengths before finalisation, then the ABI page §6 plan computed by
    :func:`pyvmm.arm64.restore_plan.plan` from the *saved* SVCR, then the rest."""
    values = state.register_map()
    shape = vector_shape(state, sme_bit)
    steps: List[Tuple[str, List[int]]] = []
    written = set()
    id_regs = [i for i in values if _is_id_register(i)]
    steps.append(("ID registers before finalisation and the first KVM_RUN (§6 step 3)", id_regs))
    written.update(id_regs)
    if shape is not None:
        steps.append(("finalize", []))
        for step in restore_plan.plan(shape, fresh=False).steps:
            if step.action != "set":
                continue
            ids = [i for i in step.ids if i in values and i not in written]
            steps.append((f"{step.title}: {step.reason} ({step.section})", ids))
            written.update(ids)
    za_on = bool(state.svcr & SVCR_ZA)
    # ZA/ZT0 exist only while SVCR.ZA = 1 (§5): with ZA off they are never written.
    rest = [i for i in values if i not in written
            and (za_on or regs.coproc_of(i) != regs.COPROC_SME or regs.decode(i).kind not in ("sme_za", "sme_zt"))]
    steps.append(("all other registers (§6 step 7)", rest))
    return steps


CLOCK_POLICIES = ("hide", "keep")


def restore(vcpu, state: VcpuState, target: Optional[int] = None, clock: str = "hide",
            cntfrq: Optional[int] = None, sme_bit: Optional[int] = None) -> int:
    """Write ``state`` into a fresh vCPU (not yet initialised). Returns the
    number of ONE_REG writes. ``clock``: "hide" (default: the guest counters
    resume where they stopped, so the guest never sees the gap; its
    watchdogs and RCU stall detector stay quiet, as with QEMU's default on
    arm64) or "keep" (they advance by the wall time since the save, so the
    guest's clock stays right but its kernel sees all that time pass at once)."""
    init(vcpu, state, target)
    return write(vcpu, state, clock, cntfrq, sme_bit)


def check_clock(clock: str) -> None:
    if clock not in CLOCK_POLICIES:
        raise UsageProblem(f"clock policy {clock!r} is not 'hide' or 'keep'")


def init(vcpu, state: VcpuState, target: Optional[int] = None) -> None:
    """First half of :func:`restore`: KVM_ARM_VCPU_INIT with the saved
    features, the saved vector-length sets (refused with the reason when the
    host cannot offer them) and MPIDR_EL1. A machine restore does this for
    every vCPU, then creates and restores the vGIC, then calls :func:`write`:
    the timer registers must reach a vCPU whose interrupt controller is
    ready, or KVM records the timer's line as raised without raising it."""
    vcpu.arm_vcpu_init(state.features, target)
    for reg_id, vqs, label in ((regs.SVE_VLS, state.sve_vls, "SVE"), (regs.SME_VLS, state.sme_vls, "SME")):
        if vqs is None:
            continue
        try:
            vcpu.set_one_reg(reg_id, regs.vls_encode(vqs))
        except KvmError as e:
            raise HostUnsupported(f"this host cannot offer the snapshot's {label} vector lengths "
                                  f"{[128 * q for q in vqs]} ({e.strerror})") from None
    mpidr = state.register_map().get(regs.MPIDR_EL1)
    if mpidr is not None:  # the vGIC routes by it (IROUTER) before the other registers come
        _write_id_register(vcpu, regs.MPIDR_EL1, mpidr)


def write(vcpu, state: VcpuState, clock: str = "hide", cntfrq: Optional[int] = None,
          sme_bit: Optional[int] = None) -> int:
    """Second half of :func:`restore`: every register in the ABI page §6
    order (ID registers, FINALIZE, SVCR first, ...), vCPU events, MP state.
    Returns the number of ONE_REG writes."""
    check_clock(clock)
    plan = WritePlan(vcpu, state, sme_bit)
    return plan.write_fixed(vcpu, state) + plan.write_rest(vcpu, state, clock, cntfrq)


_ID = operator.itemgetter(0)
_VALUE = operator.itemgetter(1)


def _picker(positions: Sequence[int]):
    """values -> [values[p] for p in positions], in C (operator.itemgetter)."""
    if not positions:
        return lambda values: []
    get = operator.itemgetter(*positions)
    if len(positions) == 1:
        return lambda values: [get(values)]
    return lambda values: list(get(values))


class WritePlan:
    """:func:`write` in two halves for one vCPU, its order computed once:
    :meth:`write_fixed` (the ID registers, then FINALIZE) depends only on the
    machine, :meth:`write_rest` (SVCR first, ..., the timers; vCPU events, MP
    state) on the moment. A live migration's destination writes the fixed
    half from the state checked at the start, while memory is copied, and
    only the rest from the final state in the pause; :meth:`fits` says
    whether a later state of the same vCPU can use this plan, and
    :meth:`fixed_key` compares what the fixed half wrote."""

    def __init__(self, vcpu, state: VcpuState, sme_bit: Optional[int] = None):
        steps = restore_order(state, sme_bit)
        self.sme_bit = sme_bit
        self.id_ids = list(steps[0][1])
        self.finalize = any(reason == "finalize" for reason, _ in steps)
        self.rest_ids = [i for reason, ids in steps[1:] if reason != "finalize" for i in ids]
        self.index = state.index
        self.register_ids = tuple(map(_ID, state.registers))
        # where each register this plan writes or compares sits in a state
        # that fits it: its values are picked in C, not looked up one by one
        at = {i: k for k, i in enumerate(self.register_ids)}
        self._pick_rest = _picker([at[i] for i in self.rest_ids])
        self._pick_ids = _picker([at[i] for i in self.id_ids])
        self._mpidr_at = at.get(regs.MPIDR_EL1)
        self._layout: Optional[BlobLayout] = None
        self.svcr = state.svcr
        self.fixed = self.fixed_key(state)
        time_ids = set(regs.GUEST_COUNTERS)
        self._time_at = [k for k, i in enumerate(self.rest_ids) if i in time_ids]
        self._batch = vcpu.one_reg_batch(self.rest_ids)
        self._current: Optional[List[bytes]] = None
        self.written = 0  # registers the last write_rest wrote
        self._svcr_at = self.rest_ids.index(regs.SVCR) if regs.SVCR in self.rest_ids else None

    def read_current(self) -> bool:
        """Read the vCPU's present values of the registers :meth:`write_rest`
        writes, so that the next write_rest writes only those whose value
        differs. Call only on a vCPU that will not run before that
        write_rest (a live migration's destination, built and never run):
        its registers then cannot change in between, so skipping an equal
        value is exact. Returns False (everything is written) when a
        register cannot be read now (e.g. ZA while SVCR.ZA is 0)."""
        try:
            self._current = self._batch.get_all(self._batch.sizes)
        except KvmError:
            self._current = None
        return self._current is not None

    @property
    def layout(self) -> BlobLayout:
        """The register blob of a state this plan fits (made on first use)."""
        return self.make_layout()

    def make_layout(self) -> BlobLayout:
        if self._layout is None:
            self._layout = BlobLayout(self.register_ids)
        return self._layout

    def fixed_key(self, state: VcpuState) -> Tuple:
        """What the fixed half depends on: features, vector lengths, the ID registers and MPIDR."""
        head = (tuple(state.features), tuple(state.sve_vls or ()), tuple(state.sme_vls or ()))
        if tuple(map(_ID, state.registers)) == self.register_ids:
            values = list(map(_VALUE, state.registers))
            return head + (tuple(self._pick_ids(values)),
                           None if self._mpidr_at is None else values[self._mpidr_at])
        by_id = state.register_map()
        return head + (tuple(by_id.get(i) for i in self.id_ids), by_id.get(regs.MPIDR_EL1))

    def fits(self, state: VcpuState) -> bool:
        """``state`` has this plan's register set and SVCR (so the same order)."""
        return state.svcr == self.svcr and tuple(map(_ID, state.registers)) == self.register_ids

    def write_fixed(self, vcpu, state: VcpuState) -> int:
        values = state.register_map()
        for reg_id in self.id_ids:
            _write_id_register(vcpu, reg_id, values[reg_id])
        if self.finalize:
            vcpu.arm_vcpu_finalize(KVM_ARM_VCPU_VEC)
        return len(self.id_ids)

    def write_rest(self, vcpu, state: VcpuState, clock: str = "hide", cntfrq: Optional[int] = None,
                   inject: bool = True) -> int:
        """Every other register through one prepared batch, then vCPU events
        (without ``inject``: no pending SError or abort made pending, see
        :meth:`pyvmm.vcpu.Vcpu.set_vcpu_events`) and MP state."""
        check_clock(clock)
        if not self.fits(state):
            raise ValueError("the vCPU state does not fit this write plan")
        data = self._pick_rest(list(map(_VALUE, state.registers)))  # fits(): the register set is this plan's
        if list(map(len, data)) != self._batch.sizes:
            for k, (value, size) in enumerate(zip(data, self._batch.sizes)):
                if len(value) != size:
                    raise UsageProblem(f"register {regs.name(self.rest_ids[k])} takes {size} bytes, got {len(value)}")
        if clock == "keep" and cntfrq and state.saved_at_ns:
            elapsed = max(0, time.time_ns() - state.saved_at_ns)
            for k in self._time_at:
                ticks = int.from_bytes(data[k], "little") + elapsed * cntfrq // 1_000_000_000
                data[k] = (ticks & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
        current, self._current = self._current, None  # good for one write only
        if current is not None and (self._svcr_at is None or current[self._svcr_at] == data[self._svcr_at]):
            # SVCR unchanged, so no write has a side effect on another register
            # (ABI page §5: writing SVCR's current value changes nothing)
            changed = [k for k, (old, new) in enumerate(zip(current, data)) if old != new]
            self._batch.set_some(changed, [data[k] for k in changed])
            self.written = len(changed)
        else:
            self._batch.set_all(data)
            self.written = len(data)
        if state.events:
            vcpu.set_vcpu_events(state.events, inject)
        vcpu.set_mp_state(state.mp_state)
        return len(self.rest_ids)

    def timers_off(self, vcpu) -> None:
        """Disable the vCPU's timers (their control registers among the ones
        this plan writes): a timer's interrupt line is then low, as on a
        fresh vCPU, which is what a later load of a state into it assumes
        (:func:`pyvmm.snapshot.machine_snapshot.load_state`)."""
        for reg_id in regs.TIMER_CTLS:
            if reg_id in self.rest_ids:
                vcpu.set_one_reg(reg_id, bytes(8))


def _write_id_register(vcpu, reg_id: int, value: bytes) -> None:
    """ID registers: write the saved value; if the host refuses it, say which
    one differs (a different CPU model or kernel)."""
    try:
        vcpu.set_one_reg(reg_id, value)
    except KvmError as e:
        current = vcpu.get_one_reg(reg_id)
        if current == value:
            return
        raise HostUnsupported(
            f"this host cannot present the snapshot's {regs.name(reg_id)} "
            f"({int.from_bytes(value, 'little'):#x}; host has {int.from_bytes(current, 'little'):#x}, "
            f"{e.strerror})", "restore on a host with the same CPU features") from None

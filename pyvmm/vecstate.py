"""The vector state of one vCPU: SVE and SME registers as the KVM SME ABI
exposes them (docs/kvm-sme-abi.md, "the ABI page").

:class:`VecState` wraps a finalised vCPU. It knows SVCR and reads and writes

* Z0-Z31 / P0-P15 / FFR at the vector length of the *current* mode (§5:
  the streaming maximum when SVCR.SM = 1, the SVE maximum otherwise),
* V0-V31 for an SME-only vCPU outside streaming mode,
* FFR only where it exists (in streaming mode only with FA64),
* ZA as SVL/8 rows and as the architectural tiles (ZA0.B; ZA0-1.H; ZA0-3.S;
  ZA0-7.D; ZA0-15.Q, see :class:`Tile`), and ZT0 (SME2),
* SVCR, SMCR_EL1, TPIDR2_EL0, SMPRI_EL1, SMIDR_EL1, FPMR, FPSR, FPCR,
  ID_AA64PFR1_EL1, ID_AA64SMFR0_EL1.

:meth:`VecState.save` returns a :class:`SavedVecState`, a plain object that
serialises to JSON; :func:`restore` writes one back in the order of
:mod:`pyvmm.arm64.restore_plan` (ABI page §6).

Buffers are always the id's full size (§3); only the first VL/8 bytes of a
Z register or ZA row (VL/64 of a P register or FFR) carry data. This module
returns and stores only those bytes and pads with zeros when writing.
"""
from __future__ import annotations

import errno
import functools
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ._record import replace  # VecShape is a record (pyvmm/_record.py)
from .arm64 import regs, restore_plan
from .arm64.vec import (EXTRA_IDS, KVM_ARM_VCPU_VEC, SMFR0_FA64, SVCR_SM, SVCR_ZA, VecShape,  # noqa: F401
                        vl_bytes)
from .arm64.za import ELEMENT_BYTES, Tile, tile_names, tile_rows  # noqa: F401 (ZA tile views, re-exported)
from . import sme
from .vcpu import OneRegBatch
from .devices.state import StateReader, _shown, loads as state_loads
from .errors import HostUnsupported, KvmError, UsageProblem

ZT0_BYTES = 64  # ZT0 is 512 bits (Arm ARM, SME2)
FORMAT_VERSION = 1

# Registers saved with every SME state besides the vector data; the plan
# decides where each is written (ABI page §6).
_ID_REGS = ("ID_AA64PFR1_EL1", "ID_AA64SMFR0_EL1", "SMIDR_EL1")
CONTROL_NAMES = ("SVCR", "SMCR_EL1", "TPIDR2_EL0", "SMPRI_EL1", "SMIDR_EL1", "FPMR", "FPSR", "FPCR",
                 "ZCR_EL1", "ID_AA64PFR1_EL1", "ID_AA64SMFR0_EL1")


# ---- the saved form --------------------------------------------------------------

@dataclass
class SavedVecState:
    """A vCPU's vector state as plain data: ``vec``, the vCPU's configuration
    and the SVCR the state was saved with (the restore order is derived from
    it, ABI page §6), and ``registers``, register names (``Z3``, ``ZA[12]``,
    ``SVCR``) mapped to their data bytes (only the bytes that carry data at
    the saved vector lengths)."""
    vec: VecShape
    registers: Dict[str, bytes] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    @classmethod
    def of(cls, sve_vqs, sme_vqs, sme_bit: Optional[int], fa64: bool, sme2: bool, svcr: int,
           registers: Dict[str, bytes]) -> "SavedVecState":
        """A saved state from its fields as the JSON form names them."""
        sve_vqs, sme_vqs = tuple(sve_vqs), tuple(sme_vqs)
        return cls(VecShape(sve=bool(sve_vqs), sme=bool(sme_vqs), svcr=svcr, sve_vqs=sve_vqs,
                            sme_vqs=sme_vqs, fa64=fa64, sme2=sme2, sme_bit=sme_bit), registers)

    # The configuration's fields, read through ``vec``.
    sve_vqs = property(lambda self: self.vec.sve_vqs)
    sme_vqs = property(lambda self: self.vec.sme_vqs)
    sme_bit = property(lambda self: self.vec.sme_bit)
    fa64 = property(lambda self: self.vec.fa64)
    sme2 = property(lambda self: self.vec.sme2)
    svcr = property(lambda self: self.vec.svcr)

    def shape(self) -> VecShape:
        """The restore planner's view: ``vec`` with FPMR and the control
        registers this state holds."""
        return VecShape.from_saved(self.vec, self.registers)

    def to_dict(self) -> dict:
        return {"format": "pyvmm-vecstate", "version": self.version, "sve_vqs": list(self.sve_vqs),
                "sme_vqs": list(self.sme_vqs), "sme_bit": self.sme_bit, "fa64": self.fa64,
                "sme2": self.sme2, "svcr": self.svcr,
                "registers": {k: v.hex() for k, v in self.registers.items()}}

    _KEYS = ("format", "version", "sve_vqs", "sme_vqs", "sme_bit", "fa64", "sme2", "svcr", "registers")
    MAX_REGISTERS = 1024  # Z0-31, P0-15, FFR, 256 ZA rows, ZT0, the few sysregs: far fewer

    @classmethod
    def from_dict(cls, d: dict) -> "SavedVecState":
        """The saved state of :meth:`to_dict`, read with the one StateReader
        strictness (docs/snapshot-format.md, "Versions"), every field checked
        (type, range, size) so a hand-edited or foreign file is refused cleanly."""
        if not isinstance(d, dict) or d.get("format") != "pyvmm-vecstate":
            raise UsageProblem("not a pyvmm vector state (format is not 'pyvmm-vecstate')")
        r = StateReader("vector", d, cls._KEYS, version=FORMAT_VERSION)
        sve_vqs, sme_vqs = r.ints("sve_vqs", 1, 16), r.ints("sme_vqs", 1, 16)
        for key, vqs in (("sve_vqs", sve_vqs), ("sme_vqs", sme_vqs)):
            if any(a >= b for a, b in zip(vqs, vqs[1:])):
                raise r.fail(f"{key!r} must be strictly increasing, not {vqs}")
        sme_bit, svcr = r.int_or_none("sme_bit", 0, 7 * 32 - 1), r.int("svcr", 0, 3)
        if svcr and not sme_vqs:
            raise r.fail(f"'svcr' is {svcr:#x} but 'sme_vqs' is empty (SVCR exists only with SME)")
        raw = r.dict("registers")
        if len(raw) > cls.MAX_REGISTERS:
            raise r.fail(f"'registers' has {len(raw)} entries, more than {cls.MAX_REGISTERS}")
        registers = {}
        for name, value in raw.items():
            if not isinstance(value, str) or len(value) > 2 * 256:
                raise r.fail(f"register {_shown(name)} must be at most 256 bytes of hex, not {_shown(value)}")
            try:
                registers[name] = bytes.fromhex(value)
            except ValueError:
                raise r.fail(f"register {_shown(name)} is not hex: {_shown(value)}") from None
        return cls.of(sve_vqs, sme_vqs, sme_bit, r.bool("fa64"), r.bool("sme2"), svcr, registers)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, data) -> "SavedVecState":
        """From JSON text or bytes (a file's contents, checked: see :meth:`from_dict`)."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        if data[:8] == b"PYVMMSNP":
            raise UsageProblem("this is a pyvmm snapshot, not a vector state",
                               "restore-plan --state takes the JSON of pyvmm.vecstate; "
                               "pyvmm inspect shows a snapshot")
        return cls.from_dict(state_loads(data, "vector state"))

    # -- views of the saved data --
    @property
    def svl_bytes(self) -> int:
        return self.vec.svl_bytes

    def za_rows(self) -> List[bytes]:
        return [self.registers[f"ZA[{r}]"] for r in range(self.svl_bytes)]

    def tile(self, name: str) -> Tile:
        if not self.svcr & SVCR_ZA:
            raise UsageProblem("the saved state has ZA off (SVCR.ZA = 0): it holds no ZA tiles")
        return Tile(name, self.za_rows())


@functools.lru_cache(maxsize=64)
def _plan(shape: VecShape, fresh: bool) -> restore_plan.Plan:
    """Plans depend only on the (hashable) shape: computed once per shape."""
    return restore_plan.plan(shape, fresh=fresh)


# ---- the live model ------------------------------------------------------------------

def _absent(vcpu, reg_id: int) -> bool:
    try:
        vcpu.get_one_reg(reg_id)
        return False
    except KvmError as e:
        if e.errno == errno.ENOENT:
            return True
        raise


class VecState:
    """The vector state of a finalised vCPU (see the module docstring).

    The vector lengths, FA64 and SME2 are read once, when attaching; SVCR is
    read live (the guest changes it), so mode-dependent accessors always
    use the vCPU's current mode.
    """

    def __init__(self, vcpu, sme_bit: Optional[int] = None):
        self.vcpu = vcpu
        sve_vqs = self._vqs(regs.SVE_VLS)
        sme_vqs = self._vqs(regs.SME_VLS)
        if not (sve_vqs or sme_vqs):
            raise UsageProblem(f"{vcpu.target} has neither SVE nor SME: it has no vector state to model")
        pfr1 = smfr0 = 0
        if sme_vqs:
            smfr0, pfr1 = vcpu.get_reg(regs.ID_AA64SMFR0_EL1), vcpu.get_reg(regs.ID_AA64PFR1_EL1)
        has_sme = bool(sme_vqs)
        # Only what the register list offers: v12 gives SMPRI_EL1 no userspace state
        # (ABI page §3), older kernels listed it.
        has_smpri = has_sme and regs.SMPRI_EL1 in vcpu.get_reg_list()
        extra = (("SMCR_EL1", "TPIDR2_EL0") if has_sme else ()) + (("SMPRI_EL1",) if has_smpri else ()) + (("ZCR_EL1",) if sve_vqs else ())
        # The configuration, read once; its svcr field is unused (SVCR is read live).
        self.vec = VecShape.from_id_regs(sve_vqs, sme_vqs, pfr1, smfr0, fpmr=not _absent(vcpu, regs.FPMR),
                                         sme_bit=sme_bit, extra=tuple(EXTRA_IDS[n] for n in extra))
        if not has_sme:
            self.vec = replace(self.vec, sme_bit=sme_bit)
        self._io: Dict[Tuple[int, ...], OneRegBatch] = {}
        self._saves: Dict[int, Tuple[OneRegBatch, List[int]]] = {}
        self._writers: Dict[int, tuple] = {}

    def _vqs(self, vls_id: int) -> Tuple[int, ...]:
        try:
            return tuple(regs.vls_decode(self.vcpu.get_one_reg(vls_id)))
        except KvmError as e:
            if e.errno == errno.ENOENT:  # no such feature on this vCPU (§4)
                return ()
            raise

    # -- configuration (read through ``vec``) --
    sve_vqs = property(lambda self: self.vec.sve_vqs)
    sme_vqs = property(lambda self: self.vec.sme_vqs)
    sme_bit = property(lambda self: self.vec.sme_bit)
    fa64 = property(lambda self: self.vec.fa64)
    sme2 = property(lambda self: self.vec.sme2)
    has_fpmr = property(lambda self: self.vec.fpmr)
    sve = property(lambda self: self.vec.sve)
    sme = property(lambda self: self.vec.sme)
    config = property(lambda self: self.vec.config)
    svl_bytes = property(lambda self: self.vec.svl_bytes, doc="Maximum streaming vector length in bytes (= ZA rows).")
    sve_vl_bytes = property(lambda self: self.vec.sve_vl_bytes)

    # -- SVCR --
    @property
    def svcr(self) -> int:
        if not self.sme:
            return 0
        io = self._batch((regs.SVCR,))
        return int.from_bytes(io.get_all((8,))[0], "little")

    def set_svcr(self, value: int) -> None:
        """Write SVCR. Side effects (ABI page §5): a change of SM zeroes V,
        Z, P and FFR, sets FPMR to 0 and FPSR to 0x0800009F; ZA 0 -> 1
        zeroes ZA and ZT0; writing the current value changes nothing."""
        if not self.sme:
            raise UsageProblem(f"{self.vcpu.target} has no SME: SVCR is always 0")
        self.vcpu.set_reg(regs.SVCR, value)

    def _shape(self, svcr: int) -> VecShape:
        return self.vec.with_svcr(svcr)

    # -- lengths of the current mode --
    def vl_bytes(self, svcr: Optional[int] = None) -> int:
        """Bytes of data in a Z register in the current mode (§5); 0 when
        the mode has only V registers (SME only, SM = 0)."""
        return self.vec.vl_bytes(self.svcr if svcr is None else svcr)

    def has_ffr(self, svcr: Optional[int] = None) -> bool:
        return self.vec.has_ffr(self.svcr if svcr is None else svcr)

    def data_length(self, reg_id: int, svcr: int) -> int:
        """How many bytes of ``reg_id``'s buffer carry data for ``svcr``."""
        d = regs.decode(reg_id)
        if d.kind == "sve_z":
            return self.vl_bytes(svcr)
        if d.kind in ("sve_p", "sve_ffr"):
            return self.vl_bytes(svcr) // 8
        if d.kind == "sme_za":
            return self.svl_bytes
        if d.kind == "sme_zt":
            return ZT0_BYTES
        return d.size

    # -- single registers (live, at the current mode's length) --
    def _get(self, reg_id: int, svcr: Optional[int] = None) -> bytes:
        svcr = self.svcr if svcr is None else svcr
        return self.vcpu.get_one_reg(reg_id)[:self.data_length(reg_id, svcr)]

    def _set(self, reg_id: int, data: bytes, svcr: Optional[int] = None) -> None:
        svcr = self.svcr if svcr is None else svcr
        n = self.data_length(reg_id, svcr)
        if len(data) != n:
            raise UsageProblem(f"{regs.name(reg_id)} holds {n} bytes in this mode "
                               f"(SVCR = {svcr:#x}), got {len(data)}")
        self.vcpu.set_one_reg(reg_id, bytes(data).ljust(regs.size_of(reg_id), b"\0"))

    def z(self, n: int) -> bytes:
        return self._get(regs.sve_z(n))

    def set_z(self, n: int, data: bytes) -> None:
        self._set(regs.sve_z(n), data)

    def p(self, n: int) -> bytes:
        return self._get(regs.sve_p(n))

    def set_p(self, n: int, data: bytes) -> None:
        self._set(regs.sve_p(n), data)

    def ffr(self) -> bytes:
        return self._get(regs.sve_ffr())

    def set_ffr(self, data: bytes) -> None:
        self._set(regs.sve_ffr(), data)

    def v(self, n: int) -> bytes:
        return self.vcpu.get_one_reg(regs.core(f"V{n}"))

    def set_v(self, n: int, data: bytes) -> None:
        self.vcpu.set_one_reg(regs.core(f"V{n}"), bytes(data))

    def za_row(self, n: int) -> bytes:
        return self._get(regs.sme_za_row(n))

    def set_za_row(self, n: int, data: bytes) -> None:
        self._set(regs.sme_za_row(n), data)

    def za(self) -> List[bytes]:
        """All SVL/8 ZA rows (one batch of reads)."""
        ids = tuple(regs.sme_za_row(r) for r in range(self.svl_bytes))
        return self._batch(ids).get_all([self.svl_bytes] * len(ids))

    def set_za(self, rows: Sequence[bytes]) -> None:
        if len(rows) != self.svl_bytes or any(len(r) != self.svl_bytes for r in rows):
            raise UsageProblem(f"ZA is {self.svl_bytes} rows of {self.svl_bytes} bytes at this SVL")
        ids = tuple(regs.sme_za_row(r) for r in range(self.svl_bytes))
        self._batch(ids).set_all(rows)

    def tile(self, name: str) -> Tile:
        return Tile(name, self.za())

    def set_tile(self, name: str, slices: Sequence[bytes]) -> None:
        """Write the horizontal slices of one tile (the other tiles' rows are kept)."""
        rows = tile_rows(name, self.svl_bytes)
        if len(slices) != len(rows):
            raise UsageProblem(f"{name} has {len(rows)} horizontal slices, got {len(slices)}")
        for r, data in zip(rows, slices):
            self.set_za_row(r, data)

    def zt0(self) -> bytes:
        return self._get(regs.sme_zt(0))

    def set_zt0(self, data: bytes) -> None:
        self._set(regs.sme_zt(0), data)

    def control(self, name: str) -> int:
        """One of :data:`CONTROL_NAMES` (or any register) as an integer."""
        return self.vcpu.get_reg(regs.parse(name))

    def set_control(self, name: str, value: int) -> None:
        if name.upper() == "SVCR":
            return self.set_svcr(value)
        self.vcpu.set_reg(regs.parse(name), value)

    # -- whole state --
    def _batch(self, ids: Tuple[int, ...]) -> OneRegBatch:
        io = self._io.get(ids)
        if io is None:
            io = self._io[ids] = self.vcpu.one_reg_batch(ids)
        return io

    def state_ids(self, svcr: int) -> List[int]:
        """The ids saved for ``svcr``: the restore plan's set (§5, §6), plus
        the SME ID registers a fresh destination needs."""
        ids = _plan(self._shape(svcr), False).ids()
        if self.sme:
            ids += [regs.parse(n) for n in _ID_REGS]
        return ids

    def _save_batch(self, svcr: int) -> Tuple[OneRegBatch, List[int]]:
        hit = self._saves.get(svcr)
        if hit is None:
            ids = tuple(self.state_ids(svcr))
            hit = self._saves[svcr] = (self._batch(ids), [self.data_length(i, svcr) for i in ids])
        return hit

    def save(self) -> SavedVecState:
        """Read the whole vector state: SVCR first (it decides which registers
        exist, §5), then that set in one batch."""
        svcr = self.svcr
        io, lengths = self._save_batch(svcr)
        return SavedVecState.of(self.sve_vqs, self.sme_vqs, self.sme_bit, self.fa64, self.sme2, svcr,
                                dict(zip(io.names, io.get_all(lengths))))

    def restore(self, saved: SavedVecState) -> restore_plan.Plan:
        """Write ``saved`` into this (finalised, same-configuration) vCPU in
        the §6 order; returns the plan it followed."""
        if tuple(saved.sve_vqs) != self.sve_vqs or tuple(saved.sme_vqs) != self.sme_vqs:
            raise UsageProblem(
                f"the saved state is for SVE {_bits(saved.sve_vqs)} / SME {_bits(saved.sme_vqs)} but "
                f"{self.vcpu.target} has SVE {_bits(self.sve_vqs)} / SME {_bits(self.sme_vqs)}",
                "restore into a fresh vCPU with vecstate.restore_fresh()")
        if saved.sme2 and not self.sme2 and saved.svcr & SVCR_ZA:
            raise HostUnsupported("the saved state holds ZT0 (SME2) but this vCPU has SME without SME2")
        p = _plan(saved.shape(), False)
        _write_plan(self, p, saved)
        return p

    def _plan_batch(self, p: restore_plan.Plan) -> OneRegBatch:
        """One batch with every id of plan ``p`` in plan order (cached per plan)."""
        hit = self._writers.get(id(p))
        if hit is None or hit[0] is not p:
            hit = self._writers[id(p)] = (p, self._batch(tuple(p.ids())))
        return hit[1]


def _bits(vqs) -> str:
    return f"{8 * vl_bytes(vqs)} bits" if vqs else "off"


def _write_plan(state: "VecState", p: restore_plan.Plan, saved: SavedVecState) -> None:
    """Every register write of ``p`` (a plan without INIT/FINALIZE steps), in order."""
    io = state._plan_batch(p)
    try:
        values = [saved.registers[n] for n in io.names]
    except KeyError as e:
        raise UsageProblem(f"the saved state lacks {e.args[0]}, which its SVCR "
                           f"({saved.svcr:#x}) says must be there") from None
    io.set_all(values)


def restore_fresh(vcpu, saved: SavedVecState, sme_bit: Optional[int] = None) -> VecState:
    """Restore ``saved`` into a new, uninitialised vCPU: the whole §6 order
    (INIT with the source's features, the saved VLS sets, the SME ID
    registers, FINALIZE(4), then the registers). Returns the live model."""
    bit = saved.sme_bit if sme_bit is None else sme_bit
    if saved.sme_vqs and bit is None:
        raise UsageProblem("the saved state has SME but no SME feature bit is known",
                           "give the bit (pyvmm caps shows it)")
    p = restore_plan.plan(_with_bit(saved.shape(), bit), fresh=True)
    finalised = False
    for step in p.steps:
        if step.action == "init":
            vcpu.arm_vcpu_init(step.features)
        elif step.action == "finalize":
            vcpu.arm_vcpu_finalize(KVM_ARM_VCPU_VEC)
            finalised = True
        elif step.action == "set" and not finalised:
            for i in step.ids:
                kind = regs.decode(i).kind
                if kind == "sve_vls":
                    sme.require_vqs(vcpu, i, saved.sve_vqs, "SVE vector length")
                elif kind == "sme_vls":
                    sme.require_vqs(vcpu, i, saved.sme_vqs, "SME vector length")
                else:  # ID registers: write only what differs (§6.3)
                    want = int.from_bytes(saved.registers[regs.name(i)], "little")
                    if vcpu.get_reg(i) != want:
                        vcpu.set_reg(i, want)
    state = VecState(vcpu, bit)
    _write_plan(state, _plan(saved.shape(), False), saved)
    return state


def _with_bit(shape: VecShape, bit: Optional[int]) -> VecShape:
    return replace(shape, sme_bit=bit)

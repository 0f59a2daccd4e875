"""The vCPU fd. A Vcpu owns its mmapped ``struct kvm_run``."""
from __future__ import annotations

import errno
import itertools
import mmap

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Iterable, List, Optional, Sequence

from .arm64 import regs
from .arm64.vec import KVM_ARM_VCPU_VEC
from ._fd import KvmFd
from ._ffi import ffi
from .kvm_device import DeviceAttrs
from .errors import KvmError, UsageProblem


class Vcpu(DeviceAttrs, KvmFd):
    def __init__(self, vm, index: int, fd: int, mmap_size: int):
        KvmFd.__init__(self, fd)
        self.vm = vm
        self.index = index
        self.target = f"vcpu{index}"
        self._mmap = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_struct = ffi.from_buffer("struct kvm_run *", self._mmap)

    # -- KVM_ARM_VCPU_INIT / FINALIZE -----------------------------------------
    def arm_vcpu_init(self, features: Iterable[int] = (), target: Optional[int] = None) -> None:
        """KVM_ARM_VCPU_INIT with the given feature bit numbers (e.g.
        ``KVM_ARM_VCPU_PSCI_0_2``, ``KVM_ARM_VCPU_SVE``, the SME bit)."""
        init = ffi.new("struct kvm_vcpu_init *")
        init.target = self.vm.preferred_target() if target is None else target
        for bit in features:
            if not 0 <= bit < 7 * 32:
                raise ValueError(f"feature bit {bit} out of range")
            init.features[bit // 32] |= 1 << (bit % 32)
        self.ioctl("KVM_ARM_VCPU_INIT", init)

    def arm_vcpu_finalize(self, what: int = KVM_ARM_VCPU_VEC) -> None:
        """KVM_ARM_VCPU_FINALIZE(what). KVM_ARM_VCPU_VEC (4, = _SVE): one
        call finalises SVE and SME together (ABI page §4)."""
        arg = ffi.new("int *", what)
        self.ioctl("KVM_ARM_VCPU_FINALIZE", arg)

    # -- ONE_REG ----------------------------------------------------------------
    def get_one_reg(self, reg_id: int) -> bytes:
        size = regs.size_of(reg_id)
        buf = ffi.new("uint8_t[]", size)
        one = ffi.new("struct kvm_one_reg *")
        one.id, one.addr = reg_id, int(ffi.cast("uintptr_t", buf))
        self._one_reg("KVM_GET_ONE_REG", one, reg_id)
        return bytes(ffi.buffer(buf, size))

    def set_one_reg(self, reg_id: int, value: bytes) -> None:
        size = regs.size_of(reg_id)
        if len(value) != size:
            raise UsageProblem(f"register {regs.name(reg_id)} takes {size} bytes, got {len(value)}")
        buf = ffi.new("uint8_t[]", bytes(value))
        one = ffi.new("struct kvm_one_reg *")
        one.id, one.addr = reg_id, int(ffi.cast("uintptr_t", buf))
        self._one_reg("KVM_SET_ONE_REG", one, reg_id)

    def _one_reg(self, name: str, one: Any, reg_id: int) -> None:
        """KVM_GET/SET_ONE_REG; a failure names the register. The name is made only
        then: a system register's name comes from a table of every encoding, built
        on first use (start-up time: reading MPIDR_EL1 for the device tree built it)."""
        try:
            self.ioctl(name, one)
        except KvmError as e:
            raise self.error(name, e.errno or 0, regs.name(reg_id)) from None

    def one_reg_batch(self, ids, framed: bool = False) -> "OneRegBatch":
        """KVM_GET/SET_ONE_REG for a fixed list of ids, prepared once."""
        return OneRegBatch(self, ids, framed)

    def get_reg(self, reg_id: int) -> int:
        """A register as an unsigned little-endian integer."""
        return int.from_bytes(self.get_one_reg(reg_id), "little")

    def set_reg(self, reg_id: int, value: int) -> None:
        self.set_one_reg(reg_id, value.to_bytes(regs.size_of(reg_id), "little"))

    def get_reg_list(self) -> List[int]:
        """KVM_GET_REG_LIST, sized from the count KVM reports with E2BIG."""
        probe = ffi.new("struct kvm_reg_list *")
        probe.n = 0
        try:
            self.ioctl("KVM_GET_REG_LIST", probe)
            return []
        except KvmError as e:
            if e.errno != errno.E2BIG:
                raise
        n = int(probe.n)
        storage = ffi.new("uint64_t[]", n + 1)
        lst = ffi.cast("struct kvm_reg_list *", storage)
        lst.n = n
        self.ioctl("KVM_GET_REG_LIST", lst)
        return ffi.unpack(lst.reg, int(lst.n))  # one call, not one cdata index per id

    # -- run ---------------------------------------------------------------------
    def prepare_run(self):
        """KVM_RUN prepared once for the run loop (:meth:`KvmFd.prepare`):
        ``issue()`` returns after an exit (read it from :attr:`run_struct`)
        and raises KvmError on failure, EINTR included (unlike :meth:`run`)."""
        return self.prepare("KVM_RUN")

    def run(self):
        """KVM_RUN, then the decoded exit. A signal (EINTR) is an
        :class:`pyvmm.exits.InterruptedExit`, not an exception."""
        from . import exits  # the decoder loads when first used, not to boot (start-up time)

        try:
            self.ioctl("KVM_RUN")
        except KvmError as e:
            if e.errno == errno.EINTR:
                return exits.InterruptedExit()
            raise
        return exits.decode(self.run_struct)

    def complete_mmio_read(self, value: bytes) -> None:
        from . import exits

        exits.complete_mmio_read(self.run_struct, value)

    def set_immediate_exit(self, on: bool) -> None:
        self.run_struct.immediate_exit = 1 if on else 0

    # -- state ioctls ------------------------------------------------------------
    def get_mp_state(self) -> int:
        s = ffi.new("struct kvm_mp_state *")
        self.ioctl("KVM_GET_MP_STATE", s)
        return int(s.mp_state)

    def set_mp_state(self, state: int) -> None:
        s = ffi.new("struct kvm_mp_state *", {"mp_state": state})
        self.ioctl("KVM_SET_MP_STATE", s)

    def get_vcpu_events(self) -> bytes:
        ev = ffi.new("struct kvm_vcpu_events *")
        self.ioctl("KVM_GET_VCPU_EVENTS", ev)
        return bytes(ffi.buffer(ev))

    def set_vcpu_events(self, raw: bytes, inject: bool = True) -> None:
        """KVM_SET_VCPU_EVENTS; without ``inject``, a pending SError or
        external data abort in ``raw`` is not made pending (the rest is
        checked by KVM as it is)."""
        ev = ffi.new("struct kvm_vcpu_events *")
        if len(raw) != ffi.sizeof(ev[0]):
            raise UsageProblem(f"kvm_vcpu_events is {ffi.sizeof(ev[0])} bytes, got {len(raw)}")
        ffi.memmove(ev, raw, len(raw))
        if not inject:
            ev.exception.serror_pending = ev.exception.serror_has_esr = ev.exception.ext_dabt_pending = 0
            ev.exception.serror_esr = 0
        self.ioctl("KVM_SET_VCPU_EVENTS", ev)

    def close(self) -> None:
        if self.fd >= 0:
            self.run_struct = None
            try:
                self._mmap.close()
            except BufferError:
                pass  # a caller still holds a view; the mapping dies with the process
            KvmFd.close(self)


class OneRegBatch:
    """KVM_GET/SET_ONE_REG for a fixed list of ids with buffers and
    ``kvm_one_reg`` structs built once and the request prepared by the fd
    layer (:meth:`KvmFd.prepare`), so a whole-state save or restore
    (pyvmm.vecstate) costs little more than the ioctls themselves
    (bench/sme_state.py): a per-register trip through ``KvmFd.ioctl`` (request
    lookup, argument cast) cost five times the ioctl itself under emulation.
    Failures are the vCPU's own KvmError (register name, explainer hint).

    ``framed``: each register's value follows its id (8 bytes, little
    endian) in the buffer, the layout of a snapshot's register blob
    (docs/snapshot-format.md), which :meth:`framed_bytes` returns whole:
    a save then needs no per-register Python work at all (:meth:`read`,
    also of some registers only, the others keeping the values last read).
    A framed batch only reads.
    """

    def __init__(self, vcpu: Vcpu, ids: Sequence[int], framed: bool = False):
        self.vcpu = vcpu
        self.ids = list(ids)
        self.framed = framed
        self._names: Optional[List[str]] = None
        self.sizes = [regs.size_of(i) for i in self.ids]
        head = 8 if framed else 0
        self.offsets = [off + head * (k + 1) for k, off in
                        enumerate(itertools.accumulate([0] + self.sizes[:-1]))] if self.ids else []
        self.total = sum(self.sizes) + head * len(self.ids)
        # One contiguous buffer: a register's bytes sit at its offset, so the
        # data goes in and out with one copy for the whole batch.
        self.buf = ffi.new("char[]", max(self.total, 1))
        if framed:
            for i, off in zip(self.ids, self.offsets):
                ffi.memmove(self.buf + off - 8, i.to_bytes(8, "little"), 8)
        base = int(ffi.cast("uintptr_t", self.buf))
        self.ones = []
        for i, off in zip(self.ids, self.offsets):
            one = ffi.new("struct kvm_one_reg *")
            one.id, one.addr = i, base + off
            self.ones.append(one)

    @property
    def names(self) -> List[str]:
        """The registers' names (computed on first use: decoding every id
        costs more than the ioctls under emulation)."""
        if self._names is None:
            self._names = [regs.name(i) for i in self.ids]
        return self._names

    def _call_all(self, name: str, only: Optional[Sequence[int]] = None) -> None:
        # The ioctl called straight from this loop (no Python frame between
        # it and the kernel: under emulation one cost about as much as the
        # ioctl); the first failure raised naming its register.
        call, fd, number = self.vcpu.prepare_raw(name)
        ones = self.ones
        if only is None:
            for one in ones:
                if call(fd, number, one) < 0:
                    self._fail(name, ones.index(one))
        else:
            for k in only:
                if call(fd, number, ones[k]) < 0:
                    self._fail(name, k)

    def _fail(self, name: str, k: int) -> None:
        raise self.vcpu.error(name, ffi.errno, regs.name(self.ids[k]))

    def read(self, only: Optional[Sequence[int]] = None) -> None:
        """Read every register (or those at the positions ``only``) into the buffer."""
        self._call_all("KVM_GET_ONE_REG", only)

    def framed_bytes(self) -> bytes:
        """A framed batch's buffer: each id and the value last read."""
        if not self.framed:
            raise ValueError("not a framed batch")
        return ffi.buffer(self.buf, self.total)[:]

    def get_all(self, lengths: Sequence[int]) -> List[bytes]:
        """Read every register; return the first ``lengths[k]`` bytes of each."""
        self._call_all("KVM_GET_ONE_REG")
        raw = ffi.buffer(self.buf, self.total)[:]
        return [raw[o:o + n] for o, n in zip(self.offsets, lengths)]

    def set_all(self, values: Sequence[bytes]) -> None:
        """Write every register; shorter values are padded with zeros."""
        if self.framed:
            raise ValueError("a framed batch only reads")
        if list(map(len, values)) == self.sizes:  # each value exactly its register's size
            blob = b"".join(values)
        else:
            blob = b"".join([v.ljust(s, b"\0") for v, s in zip(values, self.sizes)])
        if len(blob) != self.total or len(values) != len(self.sizes):
            for name, size, v in zip(self.names, self.sizes, values):
                if len(v) > size:
                    raise UsageProblem(f"{name} takes at most {size} bytes, got {len(v)}")
            raise UsageProblem(f"{len(values)} values for {len(self.sizes)} registers")
        ffi.memmove(self.buf, blob, self.total)
        self._call_all("KVM_SET_ONE_REG")

    def set_some(self, positions: Sequence[int], values: Sequence[bytes]) -> None:
        """Write the registers at ``positions`` (increasing indices into the
        batch's ids, written in that order), each value exactly its size."""
        for k, value in zip(positions, values):
            if len(value) != self.sizes[k]:
                raise UsageProblem(f"{self.names[k]} takes {self.sizes[k]} bytes, got {len(value)}")
            ffi.memmove(self.buf + self.offsets[k], value, len(value))
        self._call_all("KVM_SET_ONE_REG", positions)


def mpidr_of(vcpu: Vcpu) -> int:
    return vcpu.get_reg(regs.MPIDR_EL1)

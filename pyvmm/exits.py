"""Typed decoding of ``struct kvm_run`` after KVM_RUN returns.

Pure: takes a ``struct kvm_run *`` cdata (real or built by a test) and returns
a value; unknown exits are a value too, never an exception.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Tuple

from ._ffi import const, ffi

EXIT_NAMES = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
    7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 17: "INTERNAL_ERROR",
    24: "SYSTEM_EVENT", 28: "ARM_NISV", 39: "MEMORY_FAULT", 41: "ARM_SEA", 42: "ARM_LDST64B",
}
SYSTEM_EVENT_NAMES = {1: "SHUTDOWN", 2: "RESET", 3: "CRASH", 4: "WAKEUP", 5: "SUSPEND"}


class _Exit:
    """An immutable record of one exit: ``__slots__`` are its fields, in
    order; equal to another of the same type and values. Written out rather
    than as dataclasses: eight frozen dataclasses cost noticeably at import
    (start-up time, bench/startup.py), and MmioExit is built on every MMIO
    exit, so its ``__init__`` stays a plain function."""
    __slots__: Tuple[str, ...] = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self.__slots__)})"


_set = object.__setattr__


class MmioExit(_Exit):
    __slots__ = ("phys_addr", "data", "length", "is_write")
    phys_addr: int
    data: bytes  # the bytes written (is_write) or len zero bytes (read)
    length: int
    is_write: bool

    def __init__(self, phys_addr: int, data: bytes, length: int, is_write: bool):
        _set(self, "phys_addr", phys_addr)
        _set(self, "data", data)
        _set(self, "length", length)
        _set(self, "is_write", is_write)


class SystemEventExit(_Exit):
    __slots__ = ("type", "data")
    type: int
    data: Tuple[int, ...]

    def __init__(self, type: int, data: Tuple[int, ...] = ()):
        _set(self, "type", type)
        _set(self, "data", data)

    @property
    def name(self) -> str:
        return SYSTEM_EVENT_NAMES.get(self.type, f"type {self.type}")


class InterruptedExit(_Exit):
    """KVM_EXIT_INTR, or KVM_RUN returning EINTR: a signal arrived."""
    __slots__ = ()


class FailEntryExit(_Exit):
    __slots__ = ("reason", "cpu")
    reason: int
    cpu: int

    def __init__(self, reason: int, cpu: int):
        _set(self, "reason", reason)
        _set(self, "cpu", cpu)


class InternalErrorExit(_Exit):
    __slots__ = ("suberror", "data")
    suberror: int
    data: Tuple[int, ...]

    def __init__(self, suberror: int, data: Tuple[int, ...] = ()):
        _set(self, "suberror", suberror)
        _set(self, "data", data)


class NisvExit(_Exit):
    """A data abort KVM could not decode (no valid ISV), e.g. a load/store pair to MMIO."""
    __slots__ = ("esr_iss", "fault_ipa")
    esr_iss: int
    fault_ipa: int

    def __init__(self, esr_iss: int, fault_ipa: int):
        _set(self, "esr_iss", esr_iss)
        _set(self, "fault_ipa", fault_ipa)


class OtherExit(_Exit):
    __slots__ = ("reason", "name")
    reason: int
    name: str

    def __init__(self, reason: int, name: str = ""):
        _set(self, "reason", reason)
        _set(self, "name", name)


def decode(run) -> object:
    """Decode a ``struct kvm_run *``."""
    reason = run.exit_reason
    if reason == const("KVM_EXIT_MMIO"):
        m = run.mmio
        length = min(int(m.len), 8)
        data = bytes(ffi.buffer(m.data, 8))[:length] if m.is_write else bytes(length)
        return MmioExit(int(m.phys_addr), data, int(m.len), bool(m.is_write))
    if reason == const("KVM_EXIT_SYSTEM_EVENT"):
        se = run.system_event
        n = min(int(se.ndata), 16)
        return SystemEventExit(int(se.type), tuple(int(se.data[i]) for i in range(n)))
    if reason == const("KVM_EXIT_INTR"):
        return InterruptedExit()
    if reason == const("KVM_EXIT_FAIL_ENTRY"):
        return FailEntryExit(int(run.fail_entry.hardware_entry_failure_reason), int(run.fail_entry.cpu))
    if reason == const("KVM_EXIT_INTERNAL_ERROR"):
        ie = run.internal
        n = min(int(ie.ndata), 16)
        return InternalErrorExit(int(ie.suberror), tuple(int(ie.data[i]) for i in range(n)))
    if reason == const("KVM_EXIT_ARM_NISV"):
        return NisvExit(int(run.arm_nisv.esr_iss), int(run.arm_nisv.fault_ipa))
    return OtherExit(int(reason), EXIT_NAMES.get(int(reason), "?"))


def complete_mmio_read(run, value: bytes) -> None:
    """Put the answer of an MMIO read into kvm_run before the next KVM_RUN."""
    n = min(int(run.mmio.len), 8)
    data = bytes(value[:n]).ljust(n, b"\0")
    ffi.memmove(run.mmio.data, data, n)

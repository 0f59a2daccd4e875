"""Typed decoding of ``struct kvm_run`` after KVM_RUN returns.

Pure: takes a ``struct kvm_run *`` cdata (real or built by a test) and returns
a value; unknown exits are a value too, never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

from ._ffi import const, ffi

EXIT_NAMES = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
    7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 17: "INTERNAL_ERROR",
    24: "SYSTEM_EVENT", 28: "ARM_NISV", 39: "MEMORY_FAULT", 41: "ARM_SEA", 42: "ARM_LDST64B",
}
SYSTEM_EVENT_NAMES = {1: "SHUTDOWN", 2: "RESET", 3: "CRASH", 4: "WAKEUP", 5: "SUSPEND"}


@dataclass(frozen=True)
class MmioExit:
    phys_addr: int
    data: bytes  # the bytes written (is_write) or len zero bytes (read)
    length: int
    is_write: bool


@dataclass(frozen=True)
class SystemEventExit:
    type: int
    data: Tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return SYSTEM_EVENT_NAMES.get(self.type, f"type {self.type}")


@dataclass(frozen=True)
class InterruptedExit:
    """KVM_EXIT_INTR, or KVM_RUN returning EINTR: a signal arrived."""


@dataclass(frozen=True)
class FailEntryExit:
    reason: int
    cpu: int


@dataclass(frozen=True)
class InternalErrorExit:
    suberror: int
    data: Tuple[int, ...] = ()


@dataclass(frozen=True)
class NisvExit:
    """A data abort KVM could not decode (no valid ISV), e.g. a load/store pair to MMIO."""
    esr_iss: int
    fault_ipa: int


@dataclass(frozen=True)
class OtherExit:
    reason: int
    name: str = field(default="")


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

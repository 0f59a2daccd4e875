"""A minimal bare-metal runner: one vCPU, one RAM region, a mailbox.

For payloads and tests: a raw binary is loaded at the start of RAM and
entered at EL1h with the MMU off. The payload reports through MMIO writes to
the mailbox and stops with PSCI SYSTEM_OFF (``hvc #0`` with x0 = 0x84000008).

Mailbox (8-byte registers at MAILBOX_BASE):
  +0x00  write: append the value to ``reports``
  +0x08  write: the payload is done; the value is its status (0 = success)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional

from .. import exits
from ..arm64 import regs
from .._ffi import const
from ..errors import GuestError
from ..memory import GuestMemory

RAM_BASE = 0x80000000
MAILBOX_BASE = 0x0A000000
MAILBOX_SIZE = 0x1000
# PSTATE for EL1h with D, A, I, F masked (SPSR M[3:0] = 0b0101).
PSTATE_EL1H_MASKED = 0x3C5


@dataclass
class Outcome:
    reports: List[int] = field(default_factory=list)
    status: Optional[int] = None  # value written to the done register
    stopped_by: str = ""  # "done", "system_off", "reset", ...
    exits: int = 0


class BareMetal:
    """Create with a KVM handle, then :meth:`load`, :meth:`setup_vcpu`
    (features, optional vector-length cuts, finalise), set registers, :meth:`run`."""

    def __init__(self, kvm, ram_size: int = 2 << 20):
        self.kvm = kvm
        self.vm = kvm.create_vm()
        self.mem = GuestMemory()
        self.mem.add(RAM_BASE, ram_size, self.vm)
        self.vcpu = self.vm.create_vcpu(0)

    def load(self, image: bytes, offset: int = 0) -> None:
        self.mem.write(RAM_BASE + offset, image)

    def init_vcpu(self, features: Iterable[int]) -> None:
        self.vcpu.arm_vcpu_init([const("KVM_ARM_VCPU_PSCI_0_2"), *features])

    def enter_at(self, pc: int = RAM_BASE, sp: Optional[int] = None) -> None:
        v = self.vcpu
        v.set_reg(regs.core("PC"), pc)
        v.set_reg(regs.core("PSTATE"), PSTATE_EL1H_MASKED)
        ram_end = self.mem.regions[0].end
        v.set_reg(regs.core("SP_EL1"), ram_end if sp is None else sp)

    def run(self, max_exits: int = 100000, pause_at_report: Optional[int] = None) -> Outcome:
        """Run until the payload is done or powers off; with
        ``pause_at_report``, return (stopped_by "paused") as soon as it
        reports that value, so the caller can inspect or snapshot it."""
        out = Outcome()
        while out.exits < max_exits:
            ex = self.vcpu.run()
            out.exits += 1
            if isinstance(ex, exits.MmioExit):
                off = ex.phys_addr - MAILBOX_BASE
                if not 0 <= off < MAILBOX_SIZE:
                    raise GuestError(f"payload touched unmapped address {ex.phys_addr:#x}")
                if not ex.is_write:
                    self.vcpu.complete_mmio_read(bytes(ex.length))
                    continue
                value = int.from_bytes(ex.data, "little")
                if off == 0:
                    out.reports.append(value)
                    if pause_at_report is not None and value == pause_at_report:
                        out.stopped_by = "paused"
                        return out
                elif off == 8:
                    out.status, out.stopped_by = value, "done"
                    return out
                continue
            if isinstance(ex, exits.SystemEventExit):
                out.stopped_by = ex.name.lower()
                return out
            if isinstance(ex, exits.InterruptedExit):
                continue
            raise GuestError(f"payload stopped with an unexpected exit: {ex}")
        raise GuestError(f"payload did not finish within {max_exits} exits")

    def close(self) -> None:
        self.vm.close()
        self.mem.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

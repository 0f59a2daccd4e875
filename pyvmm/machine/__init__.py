"""The machine layer: configuration, the machine and its vCPU threads, exit
policy, console, coalesced MMIO, the vGICv3, sessions and the bare-metal runner.

The names below were importable from ``pyvmm.machine`` when it was one module
and stay so, except ``run``: a :class:`Session` runs machines, and
:func:`pyvmm.api.start` is the library's way to start one.
"""
from .config import (RESET_REASON, DiskSpec, MachineConfig, Outcome, Payload, check_disks, check_options,
                     default_cmdline, full_cmdline, lazy_exit_status, prepare)
from .console import ConsoleInput, OutputBuffer
from .coalesced import CoalescedRing
from .machine import Machine
from .session import Session

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any

    from .exit_status import ExitStatus

__all__ = ["RESET_REASON", "check_disks", "CoalescedRing", "ConsoleInput", "DiskSpec", "ExitStatus", "Machine", "MachineConfig", "Outcome",
           "OutputBuffer", "Payload", "Session", "check_options", "default_cmdline", "full_cmdline", "prepare"]


def __getattr__(name: str) -> "Any":
    """:class:`ExitStatus`, loaded on first use (PEP 562; :func:`.config.lazy_exit_status`)."""
    return lazy_exit_status(globals(), __name__, name)

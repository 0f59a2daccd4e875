"""The machine layer: configuration, the machine and its vCPU threads, exit
policy, console, coalesced MMIO, the vGICv3, sessions and the bare-metal runner.

The names below were importable from ``pyvmm.machine`` when it was one module
and stay so.
"""
from .config import (DiskSpec, ExitStatus, MachineConfig, Outcome, Payload, check_options, default_cmdline,
                     full_cmdline, prepare)
from .console import ConsoleInput, OutputBuffer
from .coalesced import CoalescedRing
from .machine import Machine
from .session import run

__all__ = ["CoalescedRing", "ConsoleInput", "DiskSpec", "ExitStatus", "Machine", "MachineConfig", "Outcome",
           "OutputBuffer", "Payload", "check_options", "default_cmdline", "full_cmdline", "prepare", "run"]

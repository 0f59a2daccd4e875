"""``pyvmm pause``: stop the vCPUs of a VM started with ``--control``."""
from __future__ import annotations

from typing import Any, Dict

from .options import Argument, lazy_command

# Its click command and the fast parser of pyvmm.commands.entry are both built from this table.
PARAMS = (Argument("socket_path", "SOCKET"),)

HELP = """Pause the VM listening on SOCKET: every vCPU stops (pending device
    accesses completed); devices take no host input until pyvmm resume."""


def execute(values: Dict[str, Any]) -> int:
    from ..control import call

    call(values["socket_path"], {"cmd": "pause"})
    print("pyvmm: paused", flush=True)
    return 0


__getattr__ = lazy_command(globals(), "pause", "pause", PARAMS, execute, HELP)

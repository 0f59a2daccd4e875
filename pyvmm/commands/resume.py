"""``pyvmm resume``: let a paused VM (``pyvmm pause``, ``restore --paused``) run again."""
from __future__ import annotations

from typing import Any, Dict

from .options import Argument, lazy_command

# Its click command and the fast parser of pyvmm.commands.entry are both built from this table.
PARAMS = (Argument("socket_path", "SOCKET"),)

HELP = """Let the VM listening on SOCKET run again after pyvmm pause (or
    pyvmm restore --paused)."""


def execute(values: Dict[str, Any]) -> int:
    from ..control import call

    call(values["socket_path"], {"cmd": "resume"})
    print("pyvmm: running", flush=True)
    return 0


__getattr__ = lazy_command(globals(), "resume", "resume", PARAMS, execute, HELP)

"""``pyvmm status``: whether a VM started with ``--control`` runs or is paused."""
from __future__ import annotations

from typing import Any, Dict

from .options import Argument, Option, lazy_command

# Its click command and the fast parser of pyvmm.commands.entry are both built from this table.
PARAMS = (
    Argument("socket_path", "SOCKET"),
    Option("as_json", "--json", type=bool, help="Print the VMM's answer as JSON."),
)

HELP = """Show whether the VM listening on SOCKET is running or paused (exit 1
    while it is still starting)."""


def execute(values: Dict[str, Any]) -> int:
    from ..control import call

    reply = call(values["socket_path"], {"cmd": "status"})
    if values["as_json"]:
        import json

        print(json.dumps(reply, sort_keys=True), flush=True)
    else:
        print(f"pyvmm: {reply['state']}, {reply['vcpus']} vCPUs, {reply['mem'] >> 20} MiB", flush=True)
    return 0


__getattr__ = lazy_command(globals(), "status", "status", PARAMS, execute, HELP)

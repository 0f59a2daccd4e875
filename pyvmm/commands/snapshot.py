"""``pyvmm snapshot``: save a running VM (started with ``--control``) to a file."""
from __future__ import annotations

import os
from typing import Any, Dict

from ..control import call
from ..errors import UsageProblem
from ._progress import MiB, ProgressBar
from .options import Argument, Option, lazy_command


# pyvmm snapshot's parameters: its click command and the fast parser of
# pyvmm.commands.entry are both built from this one table.
PARAMS = (
    Argument("socket_path", "SOCKET"),
    Argument("out", "OUT"),
    Option("stop", "--stop", type=bool, help="End the VM once the snapshot is written (pyvmm run exits 0)."),
    Option("since", "--since", metavar="PREVIOUS",
           help="Incremental: store only the memory the guest (or pyvmm) wrote since PREVIOUS, this VM's "
                "latest snapshot, in the same directory; OUT names PREVIOUS as its parent, and pyvmm restore OUT "
                "restores the chain (keep its files together and unchanged)."),
)

HELP = """Save the VM listening on SOCKET to the file OUT.

    The guest is paused (every vCPU stopped with its pending device access
    completed), its registers, SVE/SME state, interrupt controller, devices
    and non-zero memory are written to OUT atomically (mode 0600; an
    existing OUT is replaced only by a complete file), and the guest runs
    on. A guest paused with pyvmm pause stays paused.

    From its first snapshot on, the VM tracks which memory its guest and
    devices write (KVM's dirty log). With --since, OUT holds only the 1 MiB
    chunks of memory written since PREVIOUS, which must be the latest
    snapshot of this VM; a chain has at most 32 files. Refused, before the
    guest is paused: a PREVIOUS that is missing, damaged, changed, of
    another VM or not its latest, or whose chain is broken or full.

    \b
    Examples:
      pyvmm run -k Image -i initrd.cpio.gz --control /tmp/vm.sock &
      pyvmm snapshot /tmp/vm.sock vm.snap
      pyvmm restore vm.snap
      pyvmm snapshot /tmp/vm.sock vm.1.snap --since vm.snap
      pyvmm snapshot /tmp/vm.sock vm.2.snap --since vm.1.snap
      pyvmm restore vm.2.snap
    """


def execute(values: Dict[str, Any]) -> int:
    """Take the snapshot ``values`` (the parameters by name) ask for; the exit status."""
    return _snapshot(**values)


def _snapshot(socket_path, out, stop, since) -> int:
    path = os.path.abspath(out)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise UsageProblem(f"{out}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise UsageProblem(f"{out} is a directory; give a file name")
    request = {"cmd": "snapshot", "path": path, "stop": stop}
    if since is not None:
        from ..snapshot import chain

        chain.link_to(since, path)  # what the files alone tell, refused here (the VM checks again, and the rest)
        request["since"] = os.path.abspath(since)
    bar = ProgressBar("snapshot")
    try:
        reply = call(socket_path, request, bar)
    finally:
        bar.close()
    pages = f"{reply['stored_pages']} memory pages" + (f" changed since {since}" if since is not None else "")
    print(f"pyvmm: saved {out}: {reply['bytes'] / MiB:.1f} MiB ({pages}) "
          f"in {reply['paused_seconds']:.2f} s with the guest paused; the guest is {reply['state']}", flush=True)
    return 0


# ``snapshot``, the click command, is built on first use (pyvmm.cli): ``pyvmm snapshot`` starts without click
__getattr__ = lazy_command(globals(), "snapshot", "snapshot", PARAMS, execute, HELP)

"""``pyvmm snapshot``: save a running VM (started with ``--control``) to a file."""
from __future__ import annotations

import os

import click

from ..control import call
from ..errors import UsageProblem
from ._progress import MiB, ProgressBar


@click.command()
@click.argument("socket_path", metavar="SOCKET")
@click.argument("out", metavar="OUT")
@click.option("--stop", is_flag=True, help="End the VM once the snapshot is written (pyvmm run exits 0).")
def snapshot(socket_path, out, stop):
    """Save the VM listening on SOCKET to the file OUT.

    The guest is paused (every vCPU stopped with its pending device access
    completed), its registers, SVE/SME state, interrupt controller, devices
    and non-zero memory are written to OUT atomically (mode 0600; an
    existing OUT is replaced only by a complete file), and the guest runs
    on. A guest paused with pyvmm pause stays paused.

    \b
    Examples:
      pyvmm run -k Image -i initrd.cpio.gz --control /tmp/vm.sock &
      pyvmm snapshot /tmp/vm.sock vm.snap
      pyvmm restore vm.snap
    """
    path = os.path.abspath(out)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise UsageProblem(f"{out}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise UsageProblem(f"{out} is a directory; give a file name")
    bar = ProgressBar("snapshot")
    try:
        reply = call(socket_path, {"cmd": "snapshot", "path": path, "stop": stop}, bar)
    finally:
        bar.close()
    click.echo(f"pyvmm: saved {out}: {reply['bytes'] / MiB:.1f} MiB ({reply['stored_pages']} memory pages) "
               f"in {reply['paused_seconds']:.2f} s with the guest paused; the guest is {reply['state']}")

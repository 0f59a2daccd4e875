"""``pyvmm pause`` / ``resume`` / ``status``: the small control-socket
commands for a VM started with ``--control`` (``pyvmm snapshot`` has its own file)."""
from __future__ import annotations

import click

from ..control import call


@click.command()
@click.argument("socket_path", metavar="SOCKET")
def pause(socket_path):
    """Pause the VM listening on SOCKET: every vCPU stops (pending device
    accesses completed); devices take no host input until pyvmm resume."""
    call(socket_path, {"cmd": "pause"})
    click.echo("pyvmm: paused")


@click.command()
@click.argument("socket_path", metavar="SOCKET")
def resume(socket_path):
    """Let the VM listening on SOCKET run again after pyvmm pause (or
    pyvmm restore --paused)."""
    call(socket_path, {"cmd": "resume"})
    click.echo("pyvmm: running")


@click.command()
@click.argument("socket_path", metavar="SOCKET")
@click.option("--json", "as_json", is_flag=True, help="Print the VMM's answer as JSON.")
def status(socket_path, as_json):
    """Show whether the VM listening on SOCKET is running or paused (exit 1
    while it is still starting)."""
    import json

    reply = call(socket_path, {"cmd": "status"})
    if as_json:
        click.echo(json.dumps(reply, sort_keys=True))
    else:
        click.echo(f"pyvmm: {reply['state']}, {reply['vcpus']} vCPUs, {reply['mem'] >> 20} MiB")

"""``pyvmm inspect SNAP``: what a snapshot holds."""
from __future__ import annotations

import json

import click

# The snapshot modules are imported when the command runs, not when the CLI
# starts (as for abi-check): other commands would pay for them.


@click.command()
@click.argument("snapshot", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(snapshot, as_json):
    """Show a snapshot: machine configuration, memory, and every vCPU's
    registers by name, with the SVE/SME state (SVCR, vector lengths, ZA).

    \b
    Examples:
      pyvmm inspect guest.snap
      pyvmm inspect --json guest.snap | python3 -m json.tool
    """
    from ..snapshot import describe
    from ..snapshot import format as fmt

    info = describe.inspect(fmt.load(snapshot))
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        click.echo(describe.render_inspect(info))

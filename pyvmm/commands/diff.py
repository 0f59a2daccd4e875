"""``pyvmm diff A B``: what changed between two snapshots."""
from __future__ import annotations

import click

# The snapshot modules are imported when the command runs, not when the CLI
# starts (as for abi-check): other commands would pay for them.


@click.command()
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
def diff(a, b):
    """Show only what changed from snapshot A to snapshot B: machine settings,
    registers by name (vector registers by byte), memory pages. Exit status
    0 when they are the same, 3 when they differ.

    \b
    Example:
      pyvmm diff before.snap after.snap
    """
    from ..snapshot import describe
    from ..snapshot import format as fmt

    changes = describe.diff(fmt.load(a), fmt.load(b))
    for line in changes:
        click.echo(line)
    if changes:
        raise click.exceptions.Exit(3)
    click.echo("no differences")

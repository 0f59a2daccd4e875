"""``pyvmm inspect SNAP``: what a snapshot holds."""
from __future__ import annotations

import json

import click

# The snapshot modules are imported when the command runs, not when the CLI
# starts (as for abi-check): other commands would pay for them.


@click.command()
@click.argument("snapshot", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True, help="Also check the CRC-32 of every memory chunk (format version 2; "
                                              "version 1 files are checked whole when read). Exit status 2 "
                                              "if one fails.")
@click.option("--za-png", "za_png", type=click.Path(dir_okay=False), metavar="FILE",
              help="Instead of the listing, write a PNG picture of the ZA array of every vCPU whose "
                   "saved SVCR.ZA = 1: one tile per vCPU, top to bottom, separated by a red line; "
                   "ZA row n is tile row n and each byte a square (the widest tile at least 256 px) whose "
                   "grey level is its value, 0 black to 255 white; a tile with a smaller SVL is padded "
                   "in dark blue. Exit status 1 if no vCPU has ZA on.")
def inspect(snapshot, as_json, verify, za_png):
    """Show a snapshot: machine configuration, memory, and every vCPU's
    registers by name, with the SVE/SME state (SVCR, vector lengths, ZA).

    With --za-png, draw the saved ZA arrays instead: ZA is SVL/8 rows of
    SVL/8 bytes, and a vCPU holds it only while its SVCR.ZA = 1.

    \b
    Examples:
      pyvmm inspect guest.snap
      pyvmm inspect --json guest.snap | python3 -m json.tool
      pyvmm inspect --verify guest.snap
      pyvmm inspect --za-png za.png guest.snap
    """
    from ..snapshot import describe
    from ..snapshot import format as fmt

    if za_png is not None:
        if as_json:
            raise click.UsageError("--za-png writes a picture, not a listing: leave out --json")
        from ..snapshot import za_png as picture

        tiles, scale = picture.write(za_png, fmt.load(snapshot))
        shown = ", ".join(f"vcpu{t.vcpu} ({len(t.rows)}x{len(t.rows[0])} bytes, SVL {t.svl_bits} bits)"
                          for t in tiles)
        click.echo(f"wrote {za_png}: ZA of {shown}, {scale} px per byte")
        return
    snap = fmt.load(snapshot)
    if verify:
        bad = snap.verify_ram()
        if bad:
            raise fmt.SnapshotError(f"snapshot {snapshot}: {bad}", "use an intact copy or take the snapshot again")
    info = describe.inspect(snap)
    if verify:
        info["verified"] = "every memory chunk matches its CRC-32" if snap.ram_images() else \
            "the whole file matches its SHA-256 (format version 1)"
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        click.echo(describe.render_inspect(info))

"""``pyvmm migrate``: move a running VM (started with ``--control``) to a
``pyvmm restore --incoming`` listening elsewhere, while its guest runs."""
from __future__ import annotations

import json
import sys

import click

from ..control import call


class _Line:
    """The migration's progress on one terminal line (nothing when stderr is not a terminal)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        try:
            self.enabled = self.stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self.drawn = False

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.enabled:
            click.echo(f"\r\x1b[K{what}", nl=False, file=self.stream)
            self.drawn = True

    def close(self) -> None:
        if self.drawn:
            click.echo("", file=self.stream)


@click.command()
@click.argument("socket_path", metavar="SOCKET")
@click.argument("dest", metavar="DEST")
@click.option("--max-downtime", "max_downtime", type=click.IntRange(1, 3_600_000), default=300, show_default=True,
              metavar="MS", help="Stop copying while the guest runs once the rest would take at most this long.")
@click.option("--bandwidth", type=click.IntRange(1, 1 << 20), default=None, metavar="MiB/s",
              help="Send at most this many MiB per second [default: as fast as the connection goes].")
@click.option("--json", "as_json", is_flag=True, help="Print downtime_ms, sent_ms, total_ms, rounds and bytes as JSON.")
def migrate(socket_path, dest, max_downtime, bandwidth, as_json):
    """Live-migrate the VM listening on SOCKET to DEST, where
    pyvmm restore --incoming DEST waits: unix:PATH or tcp:HOST:PORT.

    The destination first checks that its host can run the guest (vector
    lengths, SME, GIC, ID registers, CNTFRQ: restore's checks); then memory
    is copied while the guest runs, round after round of the pages it
    wrote, until the rest fits --max-downtime; that rest is sent too, then
    the guest is paused, the pages it wrote meanwhile and its vCPU, vGIC
    and device state are sent, and it runs on at the destination. The source VM then ends (its pyvmm run exits 0).

    If anything fails (refused, the destination dies or stops answering,
    the connection drops) the guest keeps running here and this command
    exits 1 with the reason. Guests with vhost-vsock or virtio-fs are refused
    (vhost-net moves, with vhost's own dirty log).

    \b
    Examples:
      pyvmm restore --incoming unix:/tmp/in.sock &     # on the destination
      pyvmm migrate /tmp/vm.sock unix:/tmp/in.sock
      pyvmm restore --incoming tcp:0.0.0.0:4444 &      # on another host
      pyvmm migrate /tmp/vm.sock tcp:10.0.0.2:4444 --max-downtime 100 --json
    """
    from ..migration.transport import parse

    parse(dest)  # a bad address is a usage error before the VM is asked
    request = {"cmd": "migrate", "dest": dest, "max_downtime_ms": max_downtime}
    if bandwidth is not None:
        request["bandwidth_mib"] = bandwidth
    line = _Line()
    try:
        reply = call(socket_path, request, line)  # ControlError (exit 1): the VMM's reason, the guest runs on there
    finally:
        line.close()
    if as_json:
        click.echo(json.dumps({k: reply[k] for k in ("dest", "downtime_ms", "sent_ms", "total_ms", "rounds", "bytes", "pages",
                                                     "dirty_log", "collect_ms", "downtime_parts", "phases")},
                              sort_keys=True))
    else:
        click.echo(f"pyvmm: migrated to {reply['dest']} in {reply['total_ms'] / 1000:.2f} s "
                   f"({reply['rounds']} rounds, {reply['bytes'] / (1 << 20):.1f} MiB), "
                   f"guest paused {reply['downtime_ms']:.0f} ms (all sent after {reply['sent_ms']:.0f} ms)")

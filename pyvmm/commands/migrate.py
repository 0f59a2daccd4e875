"""``pyvmm migrate``: move a running VM (started with ``--control``) to a
``pyvmm restore --incoming`` listening elsewhere, while its guest runs.

It starts without click (:mod:`pyvmm.commands.entry`): the command's own
start-up is part of the wall time a user waits for a migration."""
from __future__ import annotations

from ._progress import ProgressBar
from .options import Argument, Option, lazy_command

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Dict, Optional, TextIO

# Its click command and the fast parser of pyvmm.commands.entry are both built from this table.
PARAMS = (
    Argument("socket_path", "SOCKET"),
    Argument("dest", "DEST"),
    Option("max_downtime", "--max-downtime", type=int, bounds=(1, 3_600_000), default=300, show_default=True,
           metavar="MS", help="Stop copying while the guest runs once the rest would take at most this long."),
    Option("bandwidth", "--bandwidth", type=int, bounds=(1, 1 << 20), metavar="MiB/s",
           help="Send at most this many MiB per second [default: as fast as the connection goes]."),
    Option("as_json", "--json", type=bool,
           help="Print downtime_ms, sent_ms, total_ms, rounds and bytes as JSON."),
)

HELP = """Live-migrate the VM listening on SOCKET to DEST, where
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

    \\b
    Examples:
      pyvmm restore --incoming unix:/tmp/in.sock &     # on the destination
      pyvmm migrate /tmp/vm.sock unix:/tmp/in.sock
      pyvmm restore --incoming tcp:0.0.0.0:4444 &      # on another host
      pyvmm migrate /tmp/vm.sock tcp:10.0.0.2:4444 --max-downtime 100 --json
    """

JSON_KEYS = ("dest", "downtime_ms", "sent_ms", "total_ms", "rounds", "bytes", "pages", "dirty_log", "collect_ms",
             "downtime_parts", "phases")


class _Line(ProgressBar):
    """The migration's progress on one terminal line, as the VMM words it
    (nothing when the stream is not a terminal)."""

    def __init__(self, stream: Optional[TextIO] = None):
        super().__init__("", stream)

    def __call__(self, done: int, total: int, what: str = "") -> None:
        if self.enabled:
            self.stream.write(f"\r\x1b[K{what}")
            self.stream.flush()
            self._drawn = True


def execute(values: Dict[str, Any]) -> int:
    from ..control import call
    from ..migration.transport import parse

    dest = values["dest"]
    parse(dest)  # a bad address is a usage error before the VM is asked
    request: Dict[str, Any] = {"cmd": "migrate", "dest": dest, "max_downtime_ms": values["max_downtime"]}
    if values["bandwidth"] is not None:
        request["bandwidth_mib"] = values["bandwidth"]
    line = _Line()
    try:
        reply = call(values["socket_path"], request, line)  # ControlError (exit 1): the VMM's reason, the guest runs on there
    finally:
        line.close()
    if values["as_json"]:
        import json

        print(json.dumps({k: reply[k] for k in JSON_KEYS}, sort_keys=True), flush=True)
    else:
        print(f"pyvmm: migrated to {reply['dest']} in {reply['total_ms'] / 1000:.2f} s "
              f"({reply['rounds']} rounds, {reply['bytes'] / (1 << 20):.1f} MiB), "
              f"guest paused {reply['downtime_ms']:.0f} ms (all sent after {reply['sent_ms']:.0f} ms)", flush=True)
    return 0


__getattr__ = lazy_command(globals(), "migrate", "migrate", PARAMS, execute, HELP)

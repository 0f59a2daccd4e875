"""``pyvmm restore``: continue a VM from a snapshot, with its console."""
from __future__ import annotations

import sys

import click

from ..kvm import DEFAULT_PATH
from ._progress import ProgressBar


@click.command()
@click.argument("snap", metavar="SNAP")
@click.option("--clock", type=click.Choice(["hide", "keep"]), default="hide", show_default=True,
              help="Guest time: hide = the guest's counters resume where they stopped, and pauses "
                   "(pyvmm pause, snapshots) are hidden too (its watchdogs see no gap); keep = they "
                   "advance by the time since the snapshot and run on through pauses (its clock stays "
                   "right, but it sees that time pass at once).")
@click.option("--control", metavar="SOCKET", help="Listen on this unix socket (mode 0600), as pyvmm run does.")
@click.option("--paused", is_flag=True, help="Build the VM but keep its vCPUs stopped until pyvmm resume SOCKET "
                                             "(needs --control).")
@click.option("--on-reboot", default=None, metavar="restart|exit",
              help="What a guest reset does [default: as when the snapshot was taken]; restart boots the "
                   "kernel named in the snapshot again, if it is still there.")
@click.option("--kvm", "kvm_path", default=DEFAULT_PATH, metavar="PATH", help="KVM device node.")
@click.option("--debug", is_flag=True, help="Show tracebacks and per-exit counts at the end.")
@click.pass_context
def restore(ctx, snap, clock, control, paused, on_reboot, kvm_path, debug):
    """Restore the VM saved in SNAP (by pyvmm snapshot) and let it run on,
    with this terminal as its console.

    Nothing is started when the snapshot cannot be restored here; the
    reason is given: a truncated, altered or newer file, another CPU
    (ID registers), vector lengths or SME this host's KVM does not offer, a
    different timer frequency, missing disk images.

    Exit status as for pyvmm run.

    \b
    Examples:
      pyvmm restore vm.snap
      pyvmm restore vm.snap --control /tmp/vm.sock --paused
    """
    from ..api import restore as restore_vm
    from ..errors import UsageProblem
    from .run import run_on_console

    if debug:
        ctx.find_root().obj["debug"] = True
    if paused and not control:
        raise UsageProblem("--paused needs --control SOCKET (to resume the VM later)")
    if on_reboot not in (None, "restart", "exit"):
        raise UsageProblem(f"--on-reboot {on_reboot!r}: choose restart or exit")
    bar = ProgressBar("restore")

    def start(**console):
        try:
            return restore_vm(snap, clock=clock, paused=paused, on_reboot=on_reboot, kvm_path=kvm_path,
                              progress=bar, trace_mmio=debug, **console)
        finally:
            bar.close()

    sys.exit(run_on_console(start, debug, control=control))

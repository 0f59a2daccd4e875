"""``pyvmm restore``: continue a VM from a snapshot, with its console."""
from __future__ import annotations

import sys
from typing import Any, Dict

from ..kvm import DEFAULT_PATH
from ._progress import ProgressBar
from .options import Argument, Option, lazy_command


# pyvmm restore's parameters: its click command and the fast parser of
# pyvmm.commands.entry are both built from this one table.
PARAMS = (
    Argument("snap", "SNAP", required=False),
    Option("incoming", "--incoming", metavar="unix:PATH|tcp:[HOST:]PORT",
           help="Instead of SNAP: receive a live migration (pyvmm migrate) on this address (TCP: HOST "
                "defaults to 127.0.0.1), from one source; the listener closes once it connected."),
    Option("clock", "--clock", choices=("hide", "keep"), default="hide", show_default=True,
           help="Guest time: hide = the guest's counters resume where they stopped, and pauses "
                "(pyvmm pause, snapshots) are hidden too (its watchdogs see no gap); keep = they "
                "advance by the time since the snapshot and run on through pauses (its clock stays "
                "right, but it sees that time pass at once)."),
    Option("control", "--control", metavar="SOCKET",
           help="Listen on this unix socket (mode 0600), as pyvmm run does."),
    Option("paused", "--paused", type=bool, help="Build the VM but keep its vCPUs stopped until pyvmm resume SOCKET "
                                                 "(needs --control)."),
    Option("disks", "--disk", multiple=True, metavar="PATH[,ro]",
           help="The disk image for the snapshot's next disk (repeatable: once per disk, in order). "
                "Needed unless the snapshot is sealed by your own pyvmm: pyvmm never opens a host "
                "file that an unsealed snapshot names."),
    Option("kernel", "-k", "--kernel", metavar="IMAGE", help="Kernel a guest reset boots (instead of the sealed "
                                                              "snapshot's; without either, a reset ends the VM)."),
    Option("initrd", "-i", "--initrd", metavar="FILE", help="Initial ramdisk for that kernel."),
    Option("firmware", "--firmware", metavar="BIN", help="Bare-metal binary a guest reset boots instead of a kernel."),
    Option("on_reboot", "--on-reboot", metavar="restart|exit",
           help="What a guest reset does [default: as when the snapshot was taken]; restart boots the "
                "kernel given with --kernel, or the one a sealed snapshot names, if it is still there."),
    Option("console_out", "--console-out", default="tty", metavar="tty|pty|unix:PATH|file:PATH",
           help="Where the console is, as for pyvmm run."),
    Option("verify", "--verify", type=bool,
           help="Check the CRC-32 of all of the snapshot's memory before the guest runs (by default "
                "memory is mapped and checked while the guest runs; a damaged chunk stops the VM)."),
    Option("kvm_path", "--kvm", default=DEFAULT_PATH, metavar="PATH", help="KVM device node."),
    Option("debug", "--debug", type=bool, help="Show tracebacks and per-exit counts at the end."),
)

HELP = """Restore the VM saved in SNAP (by pyvmm snapshot) and let it run on,
    with this terminal as its console.

    Guest memory is mapped from SNAP, not read (format version 2): the
    guest runs at once, and its memory is checked (CRC-32 per 1 MiB chunk)
    while it runs; a damaged chunk stops it with the reason. --verify checks
    everything first. Keep SNAP unchanged while the VM runs.

    Nothing is started when the snapshot cannot be restored here; the
    reason is given: a truncated, altered or newer file, another CPU
    (ID registers), vector lengths or SME this host's KVM does not offer, a
    different timer frequency, missing disk images.

    Host files (disks, the kernel a guest reset boots) come from you: from
    --disk/--kernel, or from a snapshot sealed by your own pyvmm (a keyed
    MAC under your key in ~/.config/pyvmm). The paths in any other
    snapshot are never opened.

    With --incoming, the VM comes from a running pyvmm instead (pyvmm
    migrate SOCKET DEST on the source): the same checks run on the
    source's machine before its guest is paused, and a refusal is sent
    back to it; if the migration fails this exits 1 and the guest runs on
    at the source.

    Exit status as for pyvmm run.

    \b
    Examples:
      pyvmm restore vm.snap
      pyvmm restore vm.snap --control /tmp/vm.sock --paused
      pyvmm restore their.snap --disk ./copy-of-disk.img
      pyvmm restore --incoming unix:/tmp/in.sock --control /tmp/vm2.sock
      pyvmm restore --incoming tcp:0.0.0.0:4444
    """


def execute(values: Dict[str, Any]) -> int:
    """Restore as ``values`` (the parameters by name) say; the exit status."""
    return _restore(**values)


def _restore(snap, incoming, clock, control, paused, disks, kernel, initrd, firmware, on_reboot, console_out,
             verify, kvm_path, debug) -> int:
    from ..api import restore as restore_vm
    from ..errors import UsageProblem
    from .. import console_out as console_out_lib
    from ..snapshot import trust
    from .run import parse_disk, run_on_console

    if (snap is None) == (incoming is None):
        raise UsageProblem("give a snapshot file SNAP or --incoming ADDRESS (one of them)")
    if incoming and (paused or clock != "hide"):
        raise UsageProblem("--paused and --clock apply to a snapshot, not to --incoming")
    if paused and not control:
        raise UsageProblem("--paused needs --control SOCKET (to resume the VM later)")
    if on_reboot not in (None, "restart", "exit"):
        raise UsageProblem(f"--on-reboot {on_reboot!r}: choose restart or exit")
    console_out_lib.parse(console_out)
    if kernel and firmware:
        raise UsageProblem("give at most one of --kernel IMAGE and --firmware BIN")
    if initrd and not kernel:
        raise UsageProblem("--initrd needs --kernel")
    given = trust.HostChoice(disks=[parse_disk(d) for d in disks] if disks else None,
                             kernel=kernel, initrd=initrd, firmware=firmware)
    if incoming:
        return _incoming(incoming, given, on_reboot, kvm_path, debug, control, console_out)
    bar = ProgressBar("restore")

    def start(**console):
        try:
            vm = restore_vm(snap, clock=clock, paused=paused, on_reboot=on_reboot, kvm_path=kvm_path,
                            progress=bar, trace_mmio=debug, host=given, verify=verify, **console)
        finally:
            bar.close()
        if vm.memory_load and vm.memory_load.startswith("read: ") and vm.memory_load != "read: format version 1":
            print(f"pyvmm: guest memory was read, not mapped ({vm.memory_load[6:]})", file=sys.stderr, flush=True)
        return vm

    return run_on_console(start, debug, control=control, console_out=console_out)


# ``restore``, the click command, is built on first use (pyvmm.cli): ``pyvmm restore SNAP`` starts without click
__getattr__ = lazy_command(globals(), "restore", "restore", PARAMS, execute, HELP)


def _incoming(address, given, on_reboot, kvm_path, debug, control, console_out) -> int:
    """restore --incoming: listen, wait for the source (Ctrl-C or SIGTERM
    end the wait, the listener removed), then run the received guest."""
    import json
    import os
    import signal

    from ..api import incoming
    from ..migration.destination import Incoming
    from .run import run_on_console

    inc = Incoming(address)
    try:
        print(f"pyvmm: waiting for a migration on {inc}", file=sys.stderr, flush=True)

        def term(signum, frame):
            raise KeyboardInterrupt
        old = signal.signal(signal.SIGTERM, term)
        try:
            inc.accept()
        finally:
            signal.signal(signal.SIGTERM, old)

        def start(**console):
            vm = incoming(inc, on_reboot=on_reboot, kvm_path=kvm_path, trace_mmio=debug, host=given, **console)
            if os.environ.get("PYVMM_MIGRATION_TIMING"):  # bench/migration.py: where the pause went here
                print(f"pyvmm: incoming timing (ms): {json.dumps(inc.timing)}", file=sys.stderr, flush=True)
            return vm

        return run_on_console(start, debug, control=control, console_out=console_out, cancel=inc.cancel)
    finally:
        inc.close()

"""``pyvmm run``: boot an arm64 Linux kernel (or a bare-metal binary) in a VM."""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Tuple

    import signal
else:
    import _signal as signal  # signal's C core: the same calls with int numbers, without enum (start-up time)

from .. import machine as machine_lib
from ..boot import layout
from ..errors import UsageProblem
from ..kvm import DEFAULT_PATH
from .options import Option, lazy_command

if TYPE_CHECKING:
    from ..api import VirtualMachine
    from ..console_out import Endpoint


# --console-out values meaning this process's terminal, the default (console_out.parse reads an
# empty value as tty too): nothing to open, and pyvmm.console_out is not loaded for them (issue 13,
# item 5: start-up time)
_TERMINAL = (None, "", "tty")


def _console_endpoint(spec: Optional[str]) -> Optional[Endpoint]:
    """The --console-out endpoint opened (:mod:`pyvmm.console_out`), or None for the terminal."""
    if spec in _TERMINAL:
        return None
    from ..console_out import open_endpoint

    return open_endpoint(spec)


def _check_console_out(spec: Optional[str]) -> None:
    """A --console-out value's form checked (nothing opened): a usage error before anything starts."""
    if spec not in _TERMINAL:
        from ..console_out import parse

        parse(spec)


def last_words(outcome) -> str:
    """The closing line for an outcome: its reason, and for a plain reset
    with --on-reboot exit, how to reboot instead. A reset that could not
    reboot keeps its real reason (e.g. the kernel cannot be booted again)."""
    if outcome.status == machine_lib.ExitStatus.RESET and outcome.reason == machine_lib.RESET_REASON:
        return f"{outcome.reason} (exit status 3; --on-reboot restart reboots it)"
    if outcome.status == machine_lib.ExitStatus.RESET:
        return f"{outcome.reason} (exit status 3)"
    return outcome.reason


def parse_disk(spec: str) -> machine_lib.DiskSpec:
    path, sep, opt = spec.rpartition(",")
    if sep and opt in ("ro", "rw"):
        return machine_lib.DiskSpec(path, opt == "ro")
    if not spec:
        raise UsageProblem("--disk needs a path")
    return machine_lib.DiskSpec(spec, False)


def _device_specs(nets, vsock, fss):
    """The --net, --vsock and --fs options parsed (their module loads only when one is given)."""
    if not (nets or vsock or fss):
        return [], None, []
    from ..machine import devspec

    return ([devspec.parse_net(n) for n in nets], devspec.parse_vsock(vsock) if vsock else None,
            [devspec.parse_fs(f) for f in fss])


def _say(line: str) -> None:
    print(f"pyvmm: {line}", file=sys.stderr, flush=True)


def _writer(stream):
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        def output(data: bytes) -> None:  # not a real file (e.g. a test runner)
            stream.buffer.write(data) if hasattr(stream, "buffer") else stream.write(data.decode(errors="replace"))
            stream.flush()
        return output

    def output(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                continue
            except OSError:
                return  # the reader went away: the guest keeps running
            view = view[n:]
    return output


# pyvmm run's parameters: the click command (its --help and error messages) and the
# fast parser of pyvmm.commands.entry are both built from this one table.
PARAMS = (
    Option("kernel", "-k", "--kernel", metavar="IMAGE", help="arm64 Linux kernel Image (uncompressed)."),
    Option("initrd", "-i", "--initrd", metavar="FILE", help="Initial ramdisk (initramfs) to load."),
    Option("params", "-p", "--params", metavar="CMDLINE",
           help="Kernel command line; a console= for --console is added unless given."),
    Option("mem", "-m", "--mem", default="512M", metavar="SIZE", help="Guest RAM: 512M, 2G (plain numbers are MiB)."),
    Option("cpus", "-c", "--cpus", type=int, default=1, metavar="N", help="Number of vCPUs."),
    Option("sve_max_vl", "--sve-max-vl", type=int, metavar="BITS",
           help="Largest SVE vector length the guest may use (a length the host offers)."),
    Option("sme_max_vl", "--sme-max-vl", type=int, metavar="BITS",
           help="Largest SME streaming vector length the guest may use (a length the host offers)."),
    Option("no_sve", "--no-sve", type=bool, help="No SVE for the guest (with SME: SME-only vCPUs)."),
    Option("no_sme", "--no-sme", type=bool, help="No SME for the guest (SME is on wherever KVM offers it, "
                                                 "at every streaming length the host offers)."),
    Option("no_pmu", "--no-pmu", type=bool, help="No PMUv3 for the guest (on wherever KVM offers it)."),
    Option("no_pauth", "--no-pauth", type=bool, help="No pointer authentication for the guest (on wherever KVM "
                                                     "offers it)."),
    Option("disks", "--disk", multiple=True, metavar="PATH[,ro]",
           help="Raw disk image as virtio-blk (repeatable; ,ro for read-only)."),
    Option("console", "--console", default="serial", metavar="serial|virtio",
           help="Guest console: serial (PL011, ttyAMA0) or virtio (virtio-console, hvc0)."),
    Option("console_out", "--console-out", default="tty", metavar="tty|pty|unix:PATH|file:PATH",
           help="Where the console is: this terminal; a new pty (its name is printed); a unix "
                "socket (mode 0600, one client at a time); or a log file (output only). Output "
                "nobody reads on a pty or socket is dropped, never stalling the guest."),
    Option("nets", "--net", multiple=True, metavar="tap=IFNAME[,mac=MAC][,vhost=on|off][,transport=mmio|pci]",
           help="virtio-net on tap IFNAME (created, and removed at exit, if it does not exist); "
                "packets moved by vhost-net (repeatable). transport=pci: a virtio-pci function with "
                "MSI-X through the GICv3 ITS (no exit per interrupt; snapshotted and migrated "
                "like mmio)."),
    Option("vsock", "--vsock", metavar="cid=N", help="virtio-vsock through vhost-vsock with guest CID N (3 or more)."),
    Option("fss", "--fs", multiple=True, metavar="tag=TAG,dir=DIR|socket=PATH",
           help="virtio-fs with mount tag TAG: pyvmm runs virtiofsd for DIR, or connects to the "
                "vhost-user-fs daemon at PATH (repeatable)."),
    Option("no_rng", "--no-rng", type=bool, help="No virtio-rng (present by default, fed by the host's getrandom)."),
    Option("dump_dtb", "--dump-dtb", metavar="FILE", help="Write the generated device tree blob to FILE."),
    Option("firmware", "--firmware", metavar="BIN",
           help="Raw bare-metal binary loaded at the start of RAM and entered with the MMU off."),
    Option("on_reboot", "--on-reboot", default="restart", metavar="restart|exit",
           help="What a guest reset does: reboot it, or exit with status 3."),
    Option("kvm_path", "--kvm", default=DEFAULT_PATH, metavar="PATH", help="KVM device node."),
    Option("control", "--control", metavar="SOCKET",
           help="Listen on this unix socket (mode 0600) for pyvmm pause/resume/snapshot/stop."),
    Option("debug", "--debug", type=bool, help="Show tracebacks and per-exit counts at the end."),
)

HELP = """Boot an arm64 Linux guest (or a bare-metal binary) on KVM.

    \b
    Exit status: 0 the guest powered off (or was stopped through --control);
    1 pyvmm failed; 2 usage error;
    3 the guest asked for a reset with --on-reboot exit; 4 the guest crashed;
    130 Ctrl-C / SIGINT (or Ctrl-A x on a terminal); 143 SIGTERM.

    SVE, SME, the PMU and pointer authentication are given to the guest
    wherever this host's KVM offers them, at the largest vector lengths
    (like QEMU's -cpu host); --no-sve, --no-sme, --no-pmu, --no-pauth leave
    one out. On a terminal, input goes to the guest raw; type Ctrl-A x to
    stop it.

    \b
    Examples:
      pyvmm run -k Image -i initrd.cpio.gz -p quiet -c 2 -m 1G
      pyvmm run -k Image -i initrd.cpio.gz --disk disk.img --console virtio
      pyvmm run --firmware payload.bin --dump-dtb machine.dtb
      pyvmm run -k Image -i initrd.cpio.gz --control /tmp/vm.sock   # then: pyvmm snapshot /tmp/vm.sock vm.snap
    """


def execute(values: Dict[str, Any]) -> int:
    """Run the machine ``values`` (the options by name) describe; its exit status."""
    debug = values["debug"]
    net_specs, vsock_spec, fs_specs = _device_specs(values["nets"], values["vsock"], values["fss"])
    config = machine_lib.MachineConfig(
        kernel=values["kernel"], initrd=values["initrd"], firmware=values["firmware"], cmdline=values["params"],
        mem=layout.parse_size(values["mem"]), cpus=values["cpus"], sve_max_vl=values["sve_max_vl"],
        sme_max_vl=values["sme_max_vl"], sve=not values["no_sve"], sme=not values["no_sme"],
        pmu=not values["no_pmu"], pauth=not values["no_pauth"],
        disks=[parse_disk(d) for d in values["disks"]], console=values["console"], rng=not values["no_rng"],
        nets=net_specs, vsock=vsock_spec, fss=fs_specs, on_reboot=values["on_reboot"],
        dump_dtb=values["dump_dtb"], kvm_path=values["kvm_path"], trace_mmio=debug)
    from .entry import take_opened

    # usage errors before touching the terminal; the files -k/-i name as entry opened them ahead
    payload = machine_lib.prepare(config, take_opened())
    console_out = values["console_out"]
    _check_console_out(console_out)
    from ..api import start

    return run_on_console(lambda **kw: start(config, payload=payload, **kw), debug, control=values["control"],
                          console_out=console_out)


# ``run``, the click command, is built on first use (pyvmm.cli): ``pyvmm run`` itself starts without click
__getattr__ = lazy_command(globals(), "run", "run", PARAMS, execute, HELP, show_default=True)


def run_on_console(start: Callable[..., "VirtualMachine"], debug: bool, control: Optional[str] = None,
                   console_out: str = "tty", cancel: Optional[Callable[[], None]] = None) -> int:
    """Run the machine ``start(output=, console_input=, escape=, on_ready=)``
    returns (:func:`pyvmm.api.start` or :func:`pyvmm.api.restore`) with its
    console on this process's terminal (raw mode on a terminal, restored
    afterwards) or the --console-out endpoint, an optional control socket,
    SIGINT/SIGTERM ending it (130, 143), and the closing report on stderr.
    Returns the exit status. Shared by run and restore. ``cancel()`` is
    called when a signal comes while the machine is still being built
    (restore --incoming: the migration is abandoned before the guest runs here)."""
    _check_console_out(console_out)  # usage errors before anything is opened
    server = None
    on_ready = None
    endpoint = None
    if control:
        from ..control import ControlServer
        from ..control.handler import Controller

        controller = Controller()
        server = ControlServer(control, controller.handle)
        on_ready = controller.attach
    stdin_fd = None
    saved = None
    try:
        stdin_fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        stdin_fd = None
    output = _writer(sys.stdout)
    vm: List[Optional[VirtualMachine]] = [None]
    early: List[Tuple[machine_lib.ExitStatus, str]] = []  # a signal while the machine was being built

    def stop(status: machine_lib.ExitStatus, reason: str) -> None:
        if vm[0] is None:
            early.append((status, reason))
            if cancel is not None:
                cancel()
        else:
            vm[0].stop(status, reason)
    handlers = {signal.SIGINT: lambda s, f: stop(machine_lib.ExitStatus.INTERRUPTED, "stopped by SIGINT"),
                signal.SIGTERM: lambda s, f: stop(machine_lib.ExitStatus.TERMINATED, "stopped by SIGTERM")}
    old = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        endpoint = _console_endpoint(console_out)
        if endpoint is not None:  # never the terminal's: that is None
            output, stdin_fd = endpoint.output, endpoint.input_fd
            _say(f"console on {endpoint.kind} {endpoint.name}")
        if server is not None:
            server.start()
        if endpoint is None and stdin_fd is not None and os.isatty(stdin_fd):
            import termios
            import tty

            saved = termios.tcgetattr(stdin_fd)
            tty.setraw(stdin_fd)
        try:
            with start(output=output, console_input=stdin_fd, escape=saved is not None,
                       on_ready=on_ready) as running:
                vm[0] = running
                for request in early:
                    running.stop(*request)
                outcome = running.wait(0.25)
                while outcome is None:  # short waits: this (main) thread runs the signal handlers
                    outcome = running.wait(0.25)
        finally:
            if saved is not None and stdin_fd is not None:
                import termios

                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if server is not None:
            server.close()
        if endpoint is not None:
            endpoint.close()
    if debug:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(outcome.exits.items())) or "none"
        lost = endpoint.dropped if endpoint is not None else 0
        dropped = f" ({lost} dropped: nobody read them)" if lost else ""
        first = "" if outcome.first_run_ns is None else \
            f", first KVM_RUN at CLOCK_MONOTONIC {outcome.first_run_ns / 1e9:.6f} s"
        _say(f"{outcome.reason}; VM set-up {outcome.build_seconds:.2f} s{first}, guest ran "
                   f"{outcome.seconds:.2f} s, resets {outcome.resets}, console {outcome.console_bytes} bytes"
                   f"{dropped}, exits: {counts}")
        if outcome.regpage:
            _say(f"virtio register page (reads without exits): {outcome.regpage}")
        if outcome.mmio_trace:
            top = ", ".join(f"{dev}+{off:#x} {rw} {n}" for (dev, off, rw), n in outcome.mmio_trace.most_common(8))
            _say(f"busiest MMIO registers: {top}")
    status = outcome.status
    if status not in (machine_lib.ExitStatus.POWEROFF,) and not debug:
        _say(last_words(outcome))
    return int(status)

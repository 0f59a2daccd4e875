"""The command line's click group. Only this module (and the command modules it
wires in) prints or exits. The program starts in :mod:`pyvmm.commands.entry`,
which runs a plain ``pyvmm run`` without loading click and hands everything
else to :func:`main` here.

Exit status: 0 success; 1 runtime failure; 2 usage error (bad option or
input). Errors are one line on stderr; ``--debug`` adds the traceback.
"""
from __future__ import annotations

import importlib

import click

from ._version import __version__
from .commands.entry import debug_from_env, fail

# Every command, by name: (its module under pyvmm.commands, the click command
# in it, the line `pyvmm --help` lists it with). A command's module is imported
# only when that command runs or shows its own help, so `pyvmm run` loads run's
# modules and nothing of snapshot, abi-check or inspect, and `pyvmm --help`
# loads none of them; tests/host/test_startup.py checks both.
COMMANDS = {
    "caps": ("caps", "caps", "Show what this host's KVM offers: SVE, SME, GIC, limits."),
    "abi-check": ("abi_check", "abi_check", "Check the running kernel against the KVM SME ABI."),
    "restore-plan": ("plan", "restore_plan_cmd", "Show the order a saved SVE/SME state is written back in."),
    "inspect": ("inspect", "inspect", "Show a snapshot: configuration, memory, registers."),
    "diff": ("diff", "diff", "Show what changed from snapshot A to snapshot B."),
    "run": ("run", "run", "Boot an arm64 Linux guest (or a bare-metal binary) on KVM."),
    "snapshot": ("snapshot", "snapshot", "Save the VM listening on SOCKET to the file OUT."),
    "restore": ("restore", "restore", "Restore a VM from a snapshot, or take one --incoming."),
    "migrate": ("migrate", "migrate", "Live-migrate the VM listening on SOCKET to DEST."),
    "pause": ("pause", "pause", "Pause the VM listening on SOCKET."),
    "resume": ("resume", "resume", "Let the VM listening on SOCKET run again."),
    "status": ("status", "status", "Show whether the VM on SOCKET is running or paused."),
}


class _Group(click.Group):
    """Loads each command on first use and turns pyvmm's exceptions into
    one-line messages and exit codes."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, cmd_name):
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(f".commands.{entry[0]}", __package__)
        command = getattr(module, entry[1])
        assert command.name == cmd_name, (command.name, cmd_name)
        command.short_help = entry[2]
        return command

    def format_commands(self, ctx, formatter):
        """The command list of ``pyvmm --help``, from :data:`COMMANDS` alone:
        listing a command does not import it."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in self.list_commands(ctx)])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (Exception, KeyboardInterrupt) as e:  # one line (and the status) unless --debug
            fail(e, _debug(ctx))


def _debug(ctx) -> bool:
    obj = ctx.find_root().obj or {}
    return bool(obj.get("debug")) or debug_from_env()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors (also PYVMM_DEBUG=1).")
@click.version_option(__version__, prog_name="pyvmm")
@click.pass_context
def cli(ctx, debug):
    """pyvmm: a virtual machine monitor for arm64 KVM with SVE and SME.

    It needs an arm64 Linux host with /dev/kvm. On any other machine, run it
    inside the project's emulated SME test machine:

        ci/qemu-aarch64/run -- pyvmm caps
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv=None):
    cli.main(args=argv, prog_name="pyvmm")


if __name__ == "__main__":
    main()

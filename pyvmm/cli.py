"""The command line. Only this module (and the command modules it wires in)
prints or exits.

Exit status: 0 success; 1 runtime failure; 2 usage error (bad option or
input). Errors are one line on stderr; ``--debug`` adds the traceback.
"""
from __future__ import annotations

import os
import sys
import traceback

import click

from ._version import __version__
from .errors import PyvmmError
from .commands import abi_check as abi_check_cmd
from .commands import caps as caps_cmd
from .commands import plan as plan_cmd
from .commands import diff as diff_cmd
from .commands import inspect as inspect_cmd
from .commands import migrate as migrate_cmd
from .commands import control as control_cmd
from .commands import restore as restore_cmd
from .commands import run as run_cmd
from .commands import snapshot as snapshot_cmd


class _Group(click.Group):
    """Turns pyvmm's exceptions into one-line messages and exit codes."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except PyvmmError as e:
            _fail(ctx, str(e), e.exit_status)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)
        except Exception as e:  # an unexpected bug: still one line unless --debug
            _fail(ctx, f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", 1)


def _debug(ctx) -> bool:
    obj = ctx.find_root().obj or {}
    return bool(obj.get("debug")) or os.environ.get("PYVMM_DEBUG") == "1"


def _fail(ctx, message: str, status: int):
    if _debug(ctx):
        traceback.print_exc()
    click.echo(f"pyvmm: error: {message}", err=True)
    sys.exit(status)


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


cli.add_command(caps_cmd.caps)
cli.add_command(abi_check_cmd.abi_check)
cli.add_command(plan_cmd.restore_plan_cmd)
cli.add_command(inspect_cmd.inspect)
cli.add_command(diff_cmd.diff)
cli.add_command(run_cmd.run)
cli.add_command(snapshot_cmd.snapshot)
cli.add_command(restore_cmd.restore)
cli.add_command(migrate_cmd.migrate)
cli.add_command(control_cmd.pause)
cli.add_command(control_cmd.resume)
cli.add_command(control_cmd.status)


def main(argv=None):
    cli.main(args=argv, prog_name="pyvmm")


if __name__ == "__main__":
    main()

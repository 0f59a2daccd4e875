"""``pyvmm restore-plan``: the order a saved vector state is written back in."""
from __future__ import annotations

import json

import click

from ..arm64.vec import CONFIGS, VL_MAX_BITS, VL_MIN_BITS, VecShape, parse_vl
from ..errors import UsageProblem


def _bits(ctx, param, value):
    if value is None:
        return None
    try:
        parse_vl(value)
    except UsageProblem:
        raise click.BadParameter(f"must be a multiple of 128 between {VL_MIN_BITS} and {VL_MAX_BITS}") from None
    return value


@click.command("restore-plan")
@click.option("--config", type=click.Choice(CONFIGS), default="sve+sme", show_default=True,
              help="vCPU configuration: SVE and SME, SME only, or SVE only.")
@click.option("--sm", type=click.IntRange(0, 1), default=0, show_default=True, help="Saved SVCR.SM.")
@click.option("--za", type=click.IntRange(0, 1), default=0, show_default=True, help="Saved SVCR.ZA.")
@click.option("--svl", type=int, default=512, show_default=True, callback=_bits, metavar="BITS",
              help="Saved maximum streaming vector length.")
@click.option("--vl", "sve_vl", type=int, default=256, show_default=True, callback=_bits, metavar="BITS",
              help="Saved maximum SVE vector length.")
@click.option("--fa64/--no-fa64", default=True, show_default=True, help="Source had FA64 (streaming FFR).")
@click.option("--sme2/--no-sme2", default=True, show_default=True, help="Source had SME2 (ZT0).")
@click.option("--fpmr", is_flag=True, help="FPMR is part of the saved state.")
@click.option("--into-finalised", "loaded", is_flag=True,
              help="Plan for an already initialised and finalised vCPU (no INIT/VLS/FINALIZE steps).")
@click.option("--state", "state_file", type=click.File("r"), default=None, metavar="FILE",
              help="Plan for a saved vector state (JSON from pyvmm.vecstate) instead of the options above.")
@click.option("--explain", is_flag=True, help="Give the reason for every step.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (with reasons).")
def restore_plan_cmd(config, sm, za, svl, sve_vl, fa64, sme2, fpmr, loaded, state_file, explain, as_json):
    """Show the order in which a saved SVE/SME vector state must be written
    back into a vCPU (ABI page §6): INIT, vector lengths, ID registers,
    FINALIZE, then SVCR first, FPSR/FPCR/FPMR, the V or Z/P/FFR registers
    that exist for the saved SVCR, ZA rows and ZT0 when ZA = 1, then the
    rest. The order comes from the saved SVCR, never from the destination's
    register list. Needs no KVM.

    \b
    Examples:
      pyvmm restore-plan --sm 1 --za 1 --config sve+sme --explain
      pyvmm restore-plan --config sme --sm 0 --za 1 --svl 2048 --explain
      pyvmm restore-plan --state saved.json --explain
    """
    from ..arm64 import restore_plan

    if state_file is not None:
        from ..vecstate import SavedVecState

        shape = SavedVecState.from_json(state_file.read()).shape()
    else:
        if config == "sve" and (sm or za):
            raise UsageProblem("an SVE-only vCPU has no SVCR: --sm and --za must be 0",
                               "use --config sve+sme or --config sme")
        shape = VecShape.from_options(config, sm, za, svl, sve_vl, fa64, sme2, fpmr)
    plan = restore_plan.plan(shape, fresh=not loaded)
    if as_json:
        click.echo(json.dumps(plan.to_dict(), indent=2))
    else:
        click.echo(plan.explain(reasons=explain))

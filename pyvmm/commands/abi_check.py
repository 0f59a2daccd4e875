"""``pyvmm abi-check``: does this kernel implement the KVM SME ABI?"""
from __future__ import annotations

import json
import sys

import click

from ..kvm import DEFAULT_PATH, open_kvm

# The suite is imported when the command runs, not when the CLI starts: every
# other command would pay for it (seconds, under emulation).
PASS, FAIL, SKIP = "pass", "fail", "skip"
_MARK = {PASS: "PASS", FAIL: "FAIL", SKIP: "skip"}


def render(report, verbose: bool = False) -> str:
    d = report.discovery
    lines = []
    if d.present:
        lines.append(f"SME: feature bit {d.bit} ({d.how}), capability {d.cap}, vector lengths "
                     f"{', '.join(str(128 * q) for q in report.sme_vqs)} bits, "
                     f"FA64 {'yes' if report.fa64 else 'no'}, SME2 {'yes' if report.sme2 else 'no'}")
    else:
        lines.append(f"SME: not offered by this kernel ({d.reason}); checking the SVE rules only")
    if report.sve_vqs:
        lines.append(f"SVE: vector lengths {', '.join(str(128 * q) for q in report.sve_vqs)} bits")
    lines.append("")
    width = max((len(r.rule) for r in report.results), default=10)
    for r in report.results:
        if r.status == SKIP:
            lines.append(f"{_MARK[r.status]}  {r.section:3} {r.rule.ljust(width)}  {r.title}: {r.detail}")
            continue
        obs = f"observed {r.observed}" + ("" if r.status == PASS else f", expected {r.expected}")
        lines.append(f"{_MARK[r.status]}  {r.section:3} {r.rule.ljust(width)}  {r.title}: {obs}")
        if r.detail and (r.status == FAIL or verbose):
            lines.append(f"      {r.detail}")
    c = report.counts()
    lines.append("")
    lines.append(f"{c['pass']} passed, {c['fail']} failed, {c['skip']} skipped"
                 + ("" if report.ok else " -- the kernel deviates from the ABI page (docs/kvm-sme-abi.md)"))
    return "\n".join(lines)


@click.command("abi-check")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--sme-bit", type=click.IntRange(0, 223), default=None, metavar="BIT",
              help="Use this vCPU feature bit for SME instead of probing (also PYVMM_SME_BIT).")
@click.option("--kvm", "kvm_path", default=DEFAULT_PATH, show_default=True, metavar="PATH",
              help="KVM device node.")
@click.option("--verbose", "-v", is_flag=True, help="Show details of passing rules too.")
def abi_check(as_json, sme_bit, kvm_path, verbose):
    """Check the running kernel against the KVM SME ABI, rule by rule (ABI
    page §4-§7): vector-length sets (read, cut, refuse), finalisation, the
    access table for every SM/ZA state of SVE+SME, SME-only and SVE-only
    vCPUs, SVCR side effects, the errno table, the register list, and a
    save/restore round trip in the §6 order. Every rule runs on its own
    scratch VM. Exit status 1 if any rule fails.

    On a kernel without SME it says so and checks the SVE rules.

    \b
    Examples:
      pyvmm abi-check
      pyvmm abi-check --json > abi.json
      pyvmm abi-check --sme-bit 10
    """
    from .. import abi_check as lib

    with open_kvm(kvm_path) as kvm:
        report = lib.run(kvm, sme_bit)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render(report, verbose))
    if not report.ok:
        sys.exit(1)

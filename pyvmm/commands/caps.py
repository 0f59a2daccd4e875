"""``pyvmm caps``: what this host's KVM offers."""
from __future__ import annotations

import json

import click

from .. import caps as caps_lib
from ..kvm import DEFAULT_PATH, open_kvm


def _vls(bits):
    return ", ".join(str(b) for b in bits) if bits else "-"


def _guest_default(info) -> str:
    """What pyvmm run gives a guest by default on this host (pyvmm/guest_features.py)."""
    c = info["capabilities"]
    parts = [name for name, on in (("SVE", info["sve"]["offered"]), ("SME", info["sme"]["offered"]),
                                   ("PMU", c.get("arm_pmu_v3")),
                                   ("pointer auth", c.get("arm_ptrauth_address") and c.get("arm_ptrauth_generic")))
             if on]
    return (", ".join(parts) + " (--no-sve, --no-sme, --no-pmu, --no-pauth leave one out)") if parts else "-"


def render_table(info) -> str:
    sme = info["sme"]
    if sme["offered"]:
        sme_line = f"yes (feature bit {sme['feature_bit']}, capability {sme['capability']}, {sme['found_by']})"
    else:
        sme_line = sme["reason"]
    rows = [
        ("KVM API version", str(info["api_version"])),
        ("IPA size limit", f"{info['ipa_bits_max']} bits"),
        ("vCPUs", f"recommended {info['vcpus']['recommended']}, max {info['vcpus']['max']}, "
                  f"max id {info['vcpus']['max_id']}"),
        ("memory slots", str(info["memslots"])),
        ("SVE", "yes" if info["sve"]["offered"] else "not offered by this kernel"),
        ("SVE vector lengths", _vls(info["sve"]["vector_lengths"]) + " bits" if info["sve"]["offered"] else "-"),
        ("SME", sme_line),
        ("SME vector lengths", _vls(sme["vector_lengths"]) + " bits" if sme["offered"] else "-"),
        ("GIC models", ", ".join(info["gic_models"]) or "none"),
        ("run gives guests", _guest_default(info)),
    ]
    flags = [k for k, v in info["capabilities"].items() if v]
    rows.append(("other capabilities", ", ".join(flags) or "-"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@click.option("--kvm", "kvm_path", default=DEFAULT_PATH, show_default=True, metavar="PATH",
              help="KVM device node.")
@click.option("--sme-bit", type=click.IntRange(0, 223), default=None, metavar="BIT",
              help="Use this vCPU feature bit for SME instead of probing (also PYVMM_SME_BIT).")
def caps(as_json, kvm_path, sme_bit):
    """Show what this host's KVM offers: API version, IPA limit, SVE and SME
    vector lengths (SME found by probing the feature bit, ABI page §2), GIC
    models and vCPU limits, and what pyvmm run gives a guest by default
    (SVE, SME, PMU, pointer authentication: each wherever KVM offers it).

    \b
    Examples:
      pyvmm caps
      pyvmm caps --json | python3 -m json.tool
    """
    with open_kvm(kvm_path) as kvm:
        info = caps_lib.gather(kvm, sme_bit)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        click.echo(render_table(info))

"""The project's SME kernel against the ABI page: every abi-check rule passes.

Marked sme_kernel: run with
  ci/qemu-aarch64/run --kernel "$(ci/qemu-aarch64/kernel/build)" -- python3 -m pytest -m sme_kernel tests
On a kernel without SME these tests skip, unless SME is required (``-m``
selects sme_kernel, or PYVMM_REQUIRE_SME=1), where they fail.
"""

import pytest

from pyvmm import abi_check
from support.sme_guest import require_sme

pytestmark = [pytest.mark.kvm, pytest.mark.sme_kernel]


@pytest.fixture(scope="module")
def report(request):
    from pyvmm.kvm import open_kvm

    with open_kvm() as kvm:
        require_sme(request, kvm)
        return abi_check.run(kvm)


def test_project_kernel_numbers(report):
    assert report.discovery.bit == 10
    assert report.discovery.cap == 252


def test_every_rule_passes(report):
    fails = [f"{r.rule}: expected {r.expected}, observed {r.observed} {r.detail}".strip()
             for r in report.results if r.status == abi_check.FAIL]
    assert not fails, "\n".join(fails)


def test_every_configuration_and_state_was_checked(report):
    rules = {r.rule for r in report.results if r.status == abi_check.PASS}
    for cfg in ("sve+sme", "sme"):
        for sm in (0, 1):
            for za in (0, 1):
                assert f"5.{cfg}.sm{sm}za{za}.reg_list" in rules
                assert f"6.roundtrip.{cfg}.sm{sm}za{za}" in rules
    assert "5.sve.sm0za0.reg_list" in rules

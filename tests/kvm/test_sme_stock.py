"""abi-check and SME requests on whatever kernel the test machine boots.

On stock Debian (no SME): abi-check says SME is absent, every SVE rule
passes, and asking for SME fails with a clear message. On a kernel with
SME every rule passes (tests/kvm/test_sme_abi.py has the details).
"""
import errno
import json

import pytest
from click.testing import CliRunner

from pyvmm import sme
from pyvmm.cli import cli
from pyvmm.errors import KvmError, UsageProblem

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def abi_json():
    r = CliRunner().invoke(cli, ["abi-check", "--json"])
    return r.exit_code, json.loads(r.output)


def test_abi_check_passes(abi_json):
    code, d = abi_json
    fails = [(x["rule"], x["expected"], x["observed"]) for x in d["rules"] if x["status"] == "fail"]
    assert fails == [] and code == 0
    sve_rules = {x["rule"]: x["status"] for x in d["rules"] if x["rule"].startswith(("4.sve.", "5.sve."))}
    assert sve_rules and set(sve_rules.values()) == {"pass"}


def test_sme_absent_is_reported_on_a_kernel_without_it(abi_json):
    _, d = abi_json
    if d["sme"]["present"]:
        pytest.skip("this kernel has SME (tests/kvm/test_sme_abi.py covers it)")
    text = CliRunner().invoke(cli, ["abi-check"]).output
    assert "SME: not offered by this kernel" in text and "checking the SVE rules only" in text
    skipped = {x["rule"] for x in d["rules"] if x["status"] == "skip"}
    assert {"2.sme_bit", "5.sve+sme", "5.sme"} <= skipped


def test_asking_for_sme_without_it_is_a_clear_error(kvm):
    found = sme.discover(kvm)
    if found.present:
        pytest.skip("this kernel has SME")
    vm = kvm.create_vm()
    try:
        with pytest.raises(UsageProblem, match="SME is not enabled"):
            sme.configure_vcpu(vm.create_vcpu(0), found.bit, None, 512)
        with pytest.raises(KvmError) as ei:  # forcing the project's bit on a stock kernel
            sme.configure_vcpu(vm.create_vcpu(1), 10, None, 512)
        assert ei.value.errno == errno.ENOENT
        assert "does not carry the KVM SME ABI" in str(ei.value)
    finally:
        vm.close()
    r = CliRunner().invoke(cli, ["abi-check", "--sme-bit", "10"])
    assert r.exit_code == 0 and "bit 10: unknown to the kernel" in r.output

"""pyvmm's ABI conformance suite against the model kernel of
test_sme_fake.py: every rule passes on a conforming kernel, known
deviations are caught, and a kernel without SME is reported as such."""
import pytest

from pyvmm import abi_check
from support.fake_kvm import SME_BIT, FakeKvm

pytestmark = pytest.mark.usefixtures("fake_syscalls")  # FakeKvm vCPUs go through the fd layer


def _run(**kw):
    return abi_check.run(FakeKvm(**kw), sme_bit=kw.pop("sme_bit", None))


def _fails(report):
    return [(r.rule, r.expected, r.observed, r.detail) for r in report.results if r.status == "fail"]


@pytest.mark.parametrize("kw", [
    {},
    {"fa64": False},
    {"sme2": False},
    {"fpmr": False},
    {"sme_vqs": (1,)},
    {"sme_vqs": (2, 4)},  # sparse, no 128-bit SVL
    {"sve_vqs": (1, 2, 3, 4)},
    {"sve_vqs": ()},  # SME only host
])
def test_conforming_kernel_passes_every_rule(kw):
    rep = _run(**kw)
    assert _fails(rep) == []
    assert rep.ok
    assert rep.discovery.bit == SME_BIT and rep.discovery.cap == 252
    assert rep.counts()["pass"] > 60


def test_every_access_state_is_covered():
    rep = _run()
    rules = {r.rule for r in rep.results}
    for cfg in ("sve+sme", "sme"):
        for sm in (0, 1):
            for za in (0, 1):
                tag = f"5.{cfg}.sm{sm}za{za}"
                assert {f"{tag}.V0", f"{tag}.Z0", f"{tag}.P0", f"{tag}.FFR", f"{tag}.ZA", f"{tag}.ZT0",
                        f"{tag}.reg_list"} <= rules
                assert f"6.roundtrip.{cfg}.sm{sm}za{za}" in rules
    assert "5.sve.sm0za0.reg_list" in rules and "6.roundtrip.sve.sm0za0" in rules


def test_no_sme_kernel_reports_absence_and_passes_sve_rules():
    rep = _run(sme=False)
    assert not rep.discovery.present
    assert rep.ok, _fails(rep)
    skipped = {r.rule for r in rep.results if r.status == "skip"}
    assert "2.sme_bit" in skipped and "5.sve+sme" in skipped and "5.sme" in skipped
    passed = {r.rule for r in rep.results if r.status == "pass"}
    assert {"4.sve.vls.read", "4.sve.vls.cut", "4.sve.vls.after_finalize", "4.finalize.neither",
            "4.finalize.twice.sve", "5.sve.sm0za0.Z0", "6.roundtrip.sve.sm0za0", "4.sme.vls.no_feature"} <= passed


def test_v4_svcr_without_side_effects_is_caught():
    rep = _run(bugs={"no_svcr_side_effects"})
    failed = {r.rule for r in rep.results if r.status == "fail"}
    assert "5.sve+sme.svcr.sm0to1.za0" in failed
    assert "5.sme.svcr.za_on_zeroes" in failed
    assert not rep.ok


def test_ffr_without_fa64_is_caught():
    rep = _run(fa64=False, bugs={"ffr_without_fa64"})
    failed = {r.rule for r in rep.results if r.status == "fail"}
    assert "5.sve+sme.sm1za0.FFR" in failed


def test_svcr_listed_first_is_caught():
    rep = _run(bugs={"svcr_first_in_list"})
    failed = {r.rule for r in rep.results if r.status == "fail"}
    assert "5.sve+sme.sm1za1.reg_list" in failed


def test_report_json_is_plain():
    import json

    d = _run().to_dict()
    json.dumps(d)
    assert d["sme"]["feature_bit"] == SME_BIT and d["ok"] is True


def test_tpidr2_reset_to_zero_is_caught():
    # v12 (16/29) resets TPIDR2_EL0 like TPIDR_EL0 (UNKNOWN); the project's kernel once reset it to 0
    rep = _run(bugs={"tpidr2_reset_zero"})
    failed = {r.rule for r in rep.results if r.status == "fail"}
    assert failed == {"3.tpidr2.reset"}


def test_slice_checked_before_row_is_caught():
    # v12 (21/29): a ZA row beyond the SVL is EINVAL whatever its slice
    rep = _run(sme_vqs=(1, 2), bugs={"za_slice_before_row"})
    failed = {r.rule for r in rep.results if r.status == "fail"}
    # every SVL below the largest (256 bits with SVLs 128 and 256) and the access table at the largest
    assert failed and all(r.endswith(".ZA_row_svl_slice1") or r in ("5.svl128", "5.svl256") for r in failed)
    assert {"5.svl128", "5.svl256"} <= failed


def test_the_sme_bit_is_probed_once_per_kvm_handle_that_keeps_what_it_probed():
    from pyvmm import sme

    kvm = FakeKvm()
    kvm.probed = {}  # as pyvmm.kvm.Kvm's
    first = sme.discover(kvm)
    probes = kvm.ioctls
    assert first.bit == SME_BIT and probes > 0
    assert sme.discover(kvm) is first and kvm.ioctls == probes  # no scratch VM the second time
    other = FakeKvm(sme=False)  # a handle without "probed" (the fakes elsewhere) probes every time
    assert not sme.discover(other).present and not sme.discover(other).present

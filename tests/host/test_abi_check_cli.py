"""``pyvmm abi-check`` and ``pyvmm restore-plan`` from the command line (the
kernel is the model of test_sme_fake.py)."""
import json

import pytest
from click.testing import CliRunner

from pyvmm.cli import cli
from pyvmm.commands import abi_check as cmd
from support.fake_kvm import FakeKvm

pytestmark = pytest.mark.usefixtures("fake_syscalls")  # FakeKvm vCPUs go through the fd layer


def _invoke(monkeypatch, args, **kw):
    monkeypatch.setattr(cmd, "open_kvm", lambda path: FakeKvm(**kw))
    return CliRunner().invoke(cli, ["abi-check", *args])


def test_conforming_kernel_exit_0_and_summary(monkeypatch):
    r = _invoke(monkeypatch, [])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("SME: feature bit 10 (probed), capability 252")
    assert "PASS  §5" in r.output and " 0 failed" in r.output and "FAIL" not in r.output


def test_deviation_exit_1_names_rule_expected_observed(monkeypatch):
    r = _invoke(monkeypatch, [], bugs={"no_svcr_side_effects"})
    assert r.exit_code == 1
    line = next(x for x in r.output.splitlines() if "5.sve+sme.svcr.sm0to1.za0" in x)
    assert line.startswith("FAIL") and "observed kept" in line and "expected vectors zero" in line
    assert "deviates from the ABI page" in r.output


def test_json(monkeypatch):
    r = _invoke(monkeypatch, ["--json"])
    d = json.loads(r.output)
    assert d["ok"] and d["sme"]["feature_bit"] == 10 and d["counts"]["fail"] == 0
    assert all({"rule", "section", "status", "expected", "observed"} <= set(x) for x in d["rules"])


def test_no_sme_says_so(monkeypatch):
    r = _invoke(monkeypatch, [], sme=False)
    assert r.exit_code == 0
    assert r.output.startswith("SME: not offered by this kernel (")
    assert "checking the SVE rules only" in r.output


def test_sme_bit_override(monkeypatch):
    r = _invoke(monkeypatch, ["--sme-bit", "11"])
    assert "SME: not offered" in r.output and "bit 11: unknown to the kernel" in r.output


@pytest.mark.parametrize("args, needles", [
    (["--sm", "1", "--za", "1", "--config", "sve+sme", "--explain"],
     ["SVCR = 0x3", "why:", "ZA[0]-ZA[63], ZT0", "Z0-Z31, P0-P15, FFR"]),
    (["--config", "sme", "--sm", "0", "--za", "1", "--svl", "2048"], ["V0-V31", "ZA[0]-ZA[255]"]),
    (["--config", "sme", "--sm", "1", "--no-fa64", "--no-sme2", "--za", "1"], ["Z0-Z31, P0-P15\n", "ZA[63]\n"]),
    (["--config", "sve", "--into-finalised"], ["FPSR, FPCR", "ZCR_EL1"]),
])
def test_restore_plan_command(args, needles):
    r = CliRunner().invoke(cli, ["restore-plan", *args])
    assert r.exit_code == 0, r.output
    for n in needles:
        assert n in r.output + "\n"


def test_restore_plan_refuses_svcr_for_sve_only():
    r = CliRunner().invoke(cli, ["restore-plan", "--config", "sve", "--za", "1"])
    assert r.exit_code == 2 and "SVE-only vCPU has no SVCR" in r.output


def test_restore_plan_from_saved_state(tmp_path):
    from pyvmm import sme, vecstate
    from support.fake_kvm import SME_BIT

    v = FakeKvm().create_vm().create_vcpu(0)
    sme.configure_vcpu(v, SME_BIT, None, 512)
    st = vecstate.VecState(v, SME_BIT)
    st.set_svcr(2)
    f = tmp_path / "state.json"
    f.write_text(st.save().to_json())
    r = CliRunner().invoke(cli, ["restore-plan", "--state", str(f), "--json"])
    d = json.loads(r.output)
    assert "SM=0, ZA=1" in d["shape"]
    assert d["steps"][0]["features"] == [2, 4, SME_BIT]


def test_plan_command_configs_match_the_planner():
    from pyvmm.arm64 import restore_plan
    from pyvmm.commands import plan

    assert plan.CONFIGS is restore_plan.CONFIGS  # one definition (pyvmm.arm64.vec)

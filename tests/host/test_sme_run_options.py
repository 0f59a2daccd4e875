"""``pyvmm run --sme-max-vl BITS --no-sve``: refused before touching KVM
when they cannot work (so these run on any host)."""
import pytest
from click.testing import CliRunner

from pyvmm.cli import cli
from pyvmm.errors import UsageProblem
from pyvmm.machine import MachineConfig, prepare


def test_help_lists_the_sme_options():
    out = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "--sme-max-vl BITS" in out and "--no-sve" in out


@pytest.mark.parametrize("kw, needle", [
    ({"sme_max_vl": 100}, "--sme-max-vl 100 is not a multiple of 128"),
    ({"sme_max_vl": 4096}, "--sme-max-vl 4096"),
    ({"sve": False, "sve_max_vl": 256}, "contradict"),
])
def test_prepare_refuses(tmp_path, kw, needle):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\0" * 64)
    with pytest.raises(UsageProblem, match=needle):
        prepare(MachineConfig(firmware=str(fw), **kw))


def test_cli_one_line_usage_error(tmp_path):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\0" * 64)
    r = CliRunner().invoke(cli, ["run", "--firmware", str(fw), "--sme-max-vl", "300"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [r.output.strip()] and "--sme-max-vl 300" in r.output

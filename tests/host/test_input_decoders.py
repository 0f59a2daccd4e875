"""Property tests for the decoders that take outside input (issue 14 #5):
driven from valid objects with one mutation each, every one ends in a
result or a clean refusal (a PyvmmError with a one-line message), never in
another exception (the CLI's "internal error")."""
import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvmm.cli import cli
from pyvmm.errors import PyvmmError
from pyvmm.vecstate import SavedVecState
from support.mutate import mutated

VALID_STATE = SavedVecState(sve_vqs=(1, 2), sme_vqs=(1, 2, 4), sme_bit=10, fa64=False, sme2=True, svcr=3,
                            registers={"Z0": bytes(32), "P0": bytes(4), "ZA[0]": bytes(64), "ZT0": bytes(64),
                                       "SVCR": b"\x03" + bytes(7)}).to_dict()


def _clean(fn):
    try:
        return fn()
    except PyvmmError as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return e


def test_the_valid_state_plans():
    from pyvmm import restore_plan

    shape = SavedVecState.from_dict(VALID_STATE).shape()
    assert restore_plan.plan(shape, fresh=True).steps


@given(doc=mutated(VALID_STATE))
@settings(max_examples=400, deadline=None)
def test_property_vector_state(doc):
    from pyvmm import restore_plan

    def decode_and_plan():
        return restore_plan.plan(SavedVecState.from_json(json.dumps(doc)).shape(), fresh=True)

    _clean(decode_and_plan)


@pytest.mark.parametrize("content,message", [
    (b"PYVMMSNP\x01\x00\x00\x00" + bytes(64), "this is a pyvmm snapshot, not a vector state"),
    (b"\xff\xfe{}", "vector state is not UTF-8 text (byte 0)"),
    (b"[" * 100_000, "vector state is nested deeper than 32 levels"),
    (b'{"format": "pyvmm-vecstate", "version": NaN}', "vector state is not JSON (NaN is not a JSON number"),
])
def test_restore_plan_state_file_refusals(tmp_path, content, message):
    """Issue 14 #5: `restore-plan --state vm.snap` ended in internal error: UnicodeDecodeError."""
    f = tmp_path / "in"
    f.write_bytes(content)
    r = CliRunner().invoke(cli, ["restore-plan", "--state", str(f)])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"pyvmm: error: {message}") and r.output.count("\n") == 1, r.output

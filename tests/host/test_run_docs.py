"""docs/run.md covers every flag of ``pyvmm run`` (issue 14): its flag table
names each option click knows, so a new flag cannot go undocumented."""
import os
import re

from pyvmm.commands.run import run

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "run.md")


def test_every_run_flag_is_in_the_flag_table():
    with open(DOC) as f:
        rows = [line for line in f if line.startswith("| `-")]
    documented = {flag for row in rows for flag in re.findall(r"--?[a-z][a-z0-9-]*", row.split("|")[1])}
    flags = {opt for p in run.params for opt in p.opts}
    missing = sorted(flags - documented)
    assert not missing, f"docs/run.md's flag table lacks {missing}"

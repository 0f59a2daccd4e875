"""The README's Python examples, run as written: every ```python block of
README.md, each in a fresh interpreter in a scratch directory (so the files
an example writes go there). A block says where it can run in the HTML
comment right above it: ``<!-- example: kvm -->`` (arm64 KVM: marked kvm,
skipped elsewhere with the reason, failing inside the test machine) or
``<!-- example: any host -->``."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")
_BLOCK = re.compile(r"(?:<!-- example: ([a-z ]+) -->\n)?```python\n(.*?)```", re.S)
PLACES = {"kvm": [pytest.mark.kvm], "any host": []}


def _blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start(2)) + 1
        yield line, m.group(1), m.group(2)


BLOCKS = list(_blocks())


def test_every_python_example_says_where_it_runs():
    assert BLOCKS, "README.md has no ```python examples"
    for line, place, _ in BLOCKS:
        assert place in PLACES, (f"README.md:{line}: put <!-- example: kvm --> or <!-- example: any host --> "
                                 f"right above the block")


@pytest.mark.parametrize("code", [pytest.param(code, id=f"README.md:{line}", marks=PLACES.get(place, []))
                                  for line, place, code in BLOCKS])
def test_readme_example_runs(code, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"

"""The start-up bundle (pyvmm/_pycbundle.py): a command's modules served from one
file, under the rules of a .pyc: a module whose source changed is imported anew and
the bundle rewritten; a damaged bundle is ignored; nothing is written where Python
writes no .pyc. Each case runs in a fresh interpreter (the finder sits on
sys.meta_path), on a throw-away package ``bpkg`` (a fake of pyvmm's layout: a package,
a subpackage, modules) and, last, on pyvmm's own command line."""
import json
import os
import subprocess
import sys

import pytest

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DRIVER = r"""
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import bpkg
from pyvmm._pycbundle import install
finder = install("t", "bpkg")
import bpkg.a, bpkg.sub.b
out = {"a": bpkg.a.VALUE, "b": bpkg.sub.b.VALUE, "served": sorted(finder.served),
       "file": bpkg.a.__file__, "cached": bpkg.a.__cached__, "sub_path": list(bpkg.sub.__path__),
       "loader_is_finder": bpkg.a.__spec__.loader is finder}
out["saved"] = finder.save()
print(json.dumps(out))
"""


def env(**extra):
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    e.update(extra)
    return e


def make_package(root, a="VALUE = 1\n", b="from .. import a\nVALUE = a.VALUE + 1\n"):
    pkg = root / "bpkg"
    (pkg / "sub").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text(a)
    (pkg / "sub" / "b.py").write_text(b)
    return pkg


def run(root, **extra):
    p = subprocess.run([sys.executable, "-c", DRIVER, str(root), CHECKOUT], capture_output=True, text=True,
                       env=env(**extra), timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def bundle(pkg):
    return [f for f in os.listdir(pkg / "__pycache__") if f.startswith("bundle-t.")]


def test_the_first_run_writes_the_bundle_and_the_next_is_served_from_it(tmp_path):
    pkg = make_package(tmp_path)
    first = run(tmp_path)
    assert first["served"] == [] and first["saved"] is True and first["a"] == 1 and first["b"] == 2
    assert len(bundle(pkg)) == 1
    second = run(tmp_path)
    assert second["served"] == ["bpkg.a", "bpkg.sub", "bpkg.sub.b"]
    assert second["saved"] is False  # nothing missing or stale: not rewritten
    assert (second["a"], second["b"]) == (1, 2) and second["loader_is_finder"]
    assert second["file"] == str(pkg / "a.py")  # the attributes of a usual import
    assert second["cached"] == first["cached"] and os.path.isfile(second["cached"])
    assert second["sub_path"] == [str(pkg / "sub")]


def test_a_changed_source_is_imported_anew_and_the_bundle_rewritten(tmp_path):
    pkg = make_package(tmp_path)
    run(tmp_path)
    (pkg / "a.py").write_text("VALUE = 41  # a different size\n")
    changed = run(tmp_path)
    assert changed["a"] == 41 and changed["b"] == 42
    assert "bpkg.a" not in changed["served"] and "bpkg.sub.b" in changed["served"]
    assert changed["saved"] is True
    again = run(tmp_path)
    assert again["a"] == 41 and again["served"] == ["bpkg.a", "bpkg.sub", "bpkg.sub.b"]


def test_a_module_added_to_the_path_is_added_to_the_bundle(tmp_path):
    pkg = make_package(tmp_path)
    run(tmp_path)
    (pkg / "c.py").write_text("VALUE = 3\n")
    (pkg / "a.py").write_text("from . import c\nVALUE = c.VALUE\n")
    out = run(tmp_path)
    assert out["a"] == 3 and out["saved"] is True
    assert run(tmp_path)["served"] == ["bpkg.a", "bpkg.c", "bpkg.sub", "bpkg.sub.b"]


@pytest.mark.parametrize("content", [b"", b"not a bundle", b"\xe3" * 64,
                                     __import__("marshal").dumps({"os": (False, "/etc/passwd", "/x", b"")}),
                                     __import__("marshal").dumps({"bpkg.a": (False, "x")})])
def test_a_damaged_or_foreign_bundle_is_ignored_and_replaced(tmp_path, content):
    pkg = make_package(tmp_path)
    run(tmp_path)
    (pkg / "__pycache__" / bundle(pkg)[0]).write_bytes(content)
    out = run(tmp_path)
    assert out["served"] == [] and (out["a"], out["b"]) == (1, 2) and out["saved"] is True
    assert run(tmp_path)["served"] == ["bpkg.a", "bpkg.sub", "bpkg.sub.b"]


def test_a_pyc_of_another_interpreter_in_the_bundle_is_not_used(tmp_path):
    import marshal

    pkg = make_package(tmp_path)
    run(tmp_path)
    path = pkg / "__pycache__" / bundle(pkg)[0]
    entries = marshal.loads(path.read_bytes())
    is_package, source, cached, pyc = entries["bpkg.a"]
    entries["bpkg.a"] = (is_package, source, cached, b"\x00\x00\r\n" + pyc[4:])
    path.write_bytes(marshal.dumps(entries))
    out = run(tmp_path)
    assert "bpkg.a" not in out["served"] and out["a"] == 1 and out["saved"] is True


def test_a_damaged_code_body_behind_a_valid_header_is_compiled_from_the_source(tmp_path):
    import marshal

    pkg = make_package(tmp_path)
    run(tmp_path)
    path = pkg / "__pycache__" / bundle(pkg)[0]
    entries = marshal.loads(path.read_bytes())
    for body in (b"\xff" * 8, marshal.dumps("VALUE = 666")):  # not marshal data; not a code object
        is_package, source, cached, pyc = entries["bpkg.a"]
        entries["bpkg.a"] = (is_package, source, cached, pyc[:16] + body)
        path.write_bytes(marshal.dumps(entries))
        out = run(tmp_path)
        assert out["a"] == 1 and "bpkg.a" not in out["served"] and out["saved"] is True
        assert run(tmp_path)["served"] == ["bpkg.a", "bpkg.sub", "bpkg.sub.b"]
        entries = marshal.loads(path.read_bytes())


def test_a_bundle_naming_another_copy_of_the_package_is_not_used(tmp_path):
    """A package copied with its __pycache__ (the bundle's entries name the first copy's
    files, which still exist): the copy's own modules are imported, not the first copy's."""
    import shutil

    first = make_package(tmp_path / "one")
    run(tmp_path / "one")
    shutil.copytree(first, tmp_path / "two" / "bpkg")
    (tmp_path / "two" / "bpkg" / "a.py").write_text("VALUE = 22\n")  # another size: a .pyc's own check
    out = run(tmp_path / "two")
    assert out["a"] == 22 and out["b"] == 23 and out["served"] == []
    assert out["file"] == str(tmp_path / "two" / "bpkg" / "a.py")


def test_nothing_is_written_without_bytecode_writing_and_a_failed_write_leaves_nothing(tmp_path):
    pkg = make_package(tmp_path)
    out = run(tmp_path, PYTHONDONTWRITEBYTECODE="1")
    assert out["saved"] is False and not (pkg / "__pycache__").exists()
    run(tmp_path)
    name = bundle(pkg)[0]
    os.unlink(pkg / "__pycache__" / name)
    os.mkdir(pkg / "__pycache__" / name)  # the rename into place fails (whoever runs this, root too)
    out = run(tmp_path)
    assert out["saved"] is False and (out["a"], out["b"]) == (1, 2)
    assert [f for f in os.listdir(pkg / "__pycache__") if f.endswith(".tmp")] == []


def test_pyvmm_commands_are_served_from_their_bundle_on_the_next_run(tmp_path):
    """The real command line: ``python -m pyvmm status`` (a fast command, failing
    as it should without a VM) writes its bundle beside pyvmm's .pyc files (here
    under a PYTHONPYCACHEPREFIX, leaving the checkout alone) and the next run
    reads it without rewriting it; PYVMM_NO_BUNDLE=1 neither reads nor writes one."""
    prefix = tmp_path / "pycache"
    cmd = [sys.executable, "-m", "pyvmm", "status", str(tmp_path / "none.sock")]
    e = env(PYTHONPYCACHEPREFIX=str(prefix), PYTHONPATH=CHECKOUT)

    def bundles():
        return sorted(str(p.relative_to(prefix)) for p in prefix.rglob("bundle-*.pyb"))

    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(e, PYVMM_NO_BUNDLE="1"), timeout=60)
    assert p.returncode == 2 and "no control socket" in p.stderr and bundles() == []
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=60)
    assert p.returncode == 2 and "no control socket" in p.stderr
    (path,) = bundles()
    assert path.endswith(f"pyvmm/bundle-status.{sys.implementation.cache_tag}.pyb"), path  # a prefix has no __pycache__
    written = (prefix / path).stat().st_mtime_ns
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=60)
    assert p.returncode == 2 and "no control socket" in p.stderr
    assert (prefix / path).stat().st_mtime_ns == written  # served, not rewritten
    import marshal

    names = set(marshal.loads((prefix / path).read_bytes()))
    assert "pyvmm.commands.status" in names and all(n.startswith("pyvmm.") for n in names)

"""The checked-in cffi module (pyvmm/_kvm_ffi.py) matches _kvm_cdef.h.

Compared by meaning (every struct's size and field offsets, every constant),
not by text, so a different cffi release that formats the module
differently does not count as drift.
"""
import importlib.util
import re

from pyvmm import _ffi_build
from pyvmm._ffi import ffi as checked_in


def _load(path):
    spec = importlib.util.spec_from_file_location("fresh_kvm_ffi", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi


def _layout(ffi, names):
    out = {}
    for s in names:
        t = ffi.typeof(f"struct {s}")
        out[s] = (ffi.sizeof(t), [(n, f.offset, f.type.cname) for n, f in t.fields])
    return out


def test_generated_ffi_module_matches_the_header(tmp_path):
    fresh_path = tmp_path / "_kvm_ffi.py"
    _ffi_build.generate(str(fresh_path))
    fresh = _load(str(fresh_path))
    with open(_ffi_build.CDEF, encoding="utf-8") as f:
        text = f.read()
    structs = sorted(set(re.findall(r"^struct (\w+) \{", text, re.M)))
    consts = re.findall(r"^#define (\w+) ", text, re.M)
    stale = "pyvmm/_kvm_ffi.py is stale: run 'python3 -m pyvmm._ffi_build' and commit the result"
    assert _layout(fresh, structs) == _layout(checked_in, structs), stale
    fresh_lib, lib = fresh.dlopen(None), checked_in.dlopen(None)
    assert {c: getattr(fresh_lib, c) for c in consts} == {c: getattr(lib, c) for c in consts}, stale

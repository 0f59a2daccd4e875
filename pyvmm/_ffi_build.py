"""Generates pyvmm/_kvm_ffi.py (cffi out-of-line ABI mode) from _kvm_cdef.h.

The generated module is checked in, so importing pyvmm parses no C at run
time and needs no compiler. Regenerate after editing _kvm_cdef.h:

    python3 -m pyvmm._ffi_build

tests/host/test_ffi_generated.py fails when the checked-in module drifts.
"""
from __future__ import annotations

import os
import sys

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
CDEF = os.path.join(HERE, "_kvm_cdef.h")
OUTPUT = os.path.join(HERE, "_kvm_ffi.py")


def builder() -> cffi.FFI:
    ffibuilder = cffi.FFI()
    with open(CDEF, encoding="utf-8") as f:
        ffibuilder.cdef(f.read())
    ffibuilder.set_source("pyvmm._kvm_ffi", None)
    return ffibuilder


def generate(path: str = OUTPUT) -> None:
    builder().emit_python_code(path)


if __name__ == "__main__":
    generate(sys.argv[1] if len(sys.argv) > 1 else OUTPUT)

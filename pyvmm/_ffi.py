"""The one place that builds the cffi FFI from ``_kvm_cdef.h``.

cffi's ABI mode is used: no compiler is needed at install time. Everyone else
imports ``ffi`` and ``libc()`` from here.
"""
from __future__ import annotations

import functools
import os

import cffi

_CDEF = os.path.join(os.path.dirname(__file__), "_kvm_cdef.h")


def _load_cdef() -> str:
    with open(_CDEF, encoding="utf-8") as f:
        return f.read()


ffi = cffi.FFI()
ffi.cdef(_load_cdef())


@functools.lru_cache(maxsize=None)
def libc():
    """The C library (for ioctl), opened on first use."""
    return ffi.dlopen(None)


def const(name: str) -> int:
    """An integer constant declared in _kvm_cdef.h (``#define``)."""
    return getattr(libc(), name)

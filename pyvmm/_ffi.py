"""The one place the cffi FFI comes from.

cffi's out-of-line ABI mode: ``_kvm_ffi.py`` is generated from
``_kvm_cdef.h`` by ``python3 -m pyvmm._ffi_build`` and checked in, so no C is
parsed at import and no compiler is needed at install time (the header is
still the source of truth, and a test fails when the two drift). Everyone
else imports ``ffi`` and ``libc()`` from here.
"""
from __future__ import annotations

from ._kvm_ffi import ffi

_libc = None


def libc():
    """The C library (for ioctl) with the header's constants, opened on first use
    (cached here: ``functools.lru_cache`` would load functools, start-up time)."""
    global _libc
    if _libc is None:
        _libc = ffi.dlopen(None)  # two threads racing here both get the same library
    return _libc


def const(name: str) -> int:
    """An integer constant declared in _kvm_cdef.h (``#define``)."""
    return getattr(libc(), name)

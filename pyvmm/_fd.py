"""The one place ioctls are issued and their failures turned into KvmError."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from ._ffi import ffi, libc
from .errors import KvmError
from .ioctls import request

# A hook the higher layers may install to explain an errno (ioctl, errno, reg)
# -> hint. Lower layers never import higher ones, so the explainer registers
# itself here instead of being imported.
_explainers: list = []


def register_explainer(fn: Callable[[str, int, Optional[str]], Optional[str]]) -> None:
    if fn not in _explainers:
        _explainers.append(fn)


def explain(ioctl: str, err: int, reg: Optional[str]) -> Optional[str]:
    for fn in _explainers:
        hint = fn(ioctl, err, reg)
        if hint:
            return hint
    return None


class KvmFd:
    """A kernel file descriptor of the KVM API. Subclasses add one method per ioctl."""

    target = "kvm"

    def __init__(self, fd: int):
        self.fd = fd

    def ioctl(self, name: str, arg: Any = 0, reg: Optional[str] = None) -> int:
        """Issue request ``name`` with ``arg`` (an int or cdata pointer); return
        the non-negative result or raise KvmError."""
        if self.fd < 0:
            raise ValueError(f"{self.target} is closed")
        req = request(name)
        if isinstance(arg, int):
            arg = ffi.cast("unsigned long", arg)
        ret = libc().ioctl(self.fd, ffi.cast("unsigned long", req.number), arg)
        if ret < 0:
            raise self.error(name, ffi.errno, reg)
        return ret

    def error(self, name: str, err: int, reg: Optional[str] = None) -> KvmError:
        """The KvmError for request ``name`` failing with ``err`` on this fd,
        with the registered explainers' hint."""
        return KvmError(err, name, self.target, reg, explain(name, err, reg))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

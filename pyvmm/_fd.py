"""The one place ioctl(2) is issued and a failure becomes a KvmError carrying its hint."""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Tuple

from ._ffi import ffi, libc
from .errors import KvmError
from .ioctls import request

_ioctl_call: Any = None


def _ioctl() -> Any:
    """libc's ioctl as cffi calls it, and how an integer argument is passed:
    ``(call, arg_of_int)``.

    On arm64 Linux it is called through a pointer of the fixed type
    ``int (*)(int, unsigned long, void *)``: cffi builds a variadic call's
    interface anew at every call (its argument types may change), which
    cost about twice the ioctl itself per call (KVM_GET_DEVICE_ATTR,
    ONE_REG, KVM_RUN). Exact by the ABI: in AAPCS64 as Linux uses it (not
    Apple's variant) an anonymous argument of a variadic call is passed
    where a named one of its type would be, the third in x2, and a pointer
    and an unsigned long are both one 64-bit integer register, so ioctl's
    ``va_arg`` reads the same value either way. Elsewhere (host tests on
    other machines) the declared variadic form is kept."""
    global _ioctl_call
    if _ioctl_call is None:
        if os.uname().machine in ("aarch64", "arm64"):
            fixed = ffi.cast("int(*)(int, unsigned long, void *)", ffi.addressof(libc(), "ioctl"))
            _ioctl_call = (fixed, lambda n: ffi.cast("void *", n))
        else:
            _ioctl_call = (libc().ioctl, lambda n: ffi.cast("unsigned long", n))
    return _ioctl_call


class KvmFd:
    """A kernel file descriptor of the KVM API. Subclasses add one method per ioctl."""

    target = "kvm"

    def __init__(self, fd: int):
        self.fd = fd

    def ioctl(self, name: str, arg: Any = 0) -> int:
        """Issue request ``name`` with ``arg`` (an int or cdata pointer); return
        the non-negative result or raise KvmError."""
        if self.fd < 0:
            raise ValueError(f"{self.target} is closed")
        req = request(name)
        call, arg_of_int = _ioctl()
        if isinstance(arg, int):
            arg = arg_of_int(arg)
        ret = call(self.fd, ffi.cast("unsigned long", req.number), arg)
        if ret < 0:
            raise self.error(name, ffi.errno)
        return ret

    def prepare_raw(self, name: str) -> Tuple[Callable[[int, Any, Any], int], int, Any]:
        """``(call, fd, number)`` for loops that issue request ``name`` many
        times with no Python call between them and the kernel:
        ``call(fd, number, arg)`` returns the result, negative on failure
        (then ``ffi.errno`` holds the error: raise :meth:`error` with it).
        Under emulation the Python frame of :meth:`prepare`'s ``issue`` cost
        about as much as a ONE_REG or device-attr ioctl itself. Use it only
        while the fd is open."""
        if self.fd < 0:
            raise ValueError(f"{self.target} is closed")
        return _ioctl()[0], self.fd, ffi.cast("unsigned long", request(name).number)

    def prepare(self, name: str) -> Callable[..., int]:
        """Request ``name`` on this fd with its number looked up and cast once,
        for loops that issue it many times (the vCPU run loop, ONE_REG
        batches). The returned ``issue(arg=0, reg=None)`` takes a cdata
        argument, returns the non-negative result or raises this fd's
        KvmError. It holds the fd number: use it only while the fd is open."""
        if self.fd < 0:
            raise ValueError(f"{self.target} is closed")
        fd, number = self.fd, ffi.cast("unsigned long", request(name).number)
        (call, arg_of_int), error = _ioctl(), self.error
        zero = arg_of_int(0)

        def issue(arg: Any = zero, reg: Optional[str] = None) -> int:
            ret = call(fd, number, arg)
            if ret < 0:
                raise error(name, ffi.errno, reg)
            return ret
        return issue

    def error(self, name: str, err: int, reg: Optional[str] = None) -> KvmError:
        """The KvmError for request ``name`` failing with ``err`` on this fd,
        with the ABI page's hint when it has one (:mod:`pyvmm.arm64.errno_explain`,
        loaded when the hint is first read: a failure that is caught and looked at
        only for its errno, like the SME probe's, is not slowed by it)."""
        def explain() -> Optional[str]:
            from .arm64 import errno_explain

            return errno_explain.explain(name, err, reg)
        return KvmError(err, name, self.target, reg, explain=explain)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

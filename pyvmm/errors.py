"""pyvmm's one exception hierarchy.

Every error carries a ``hint`` (what the user should do) and an
``exit_status`` (2 for usage errors, 1 for runtime failures). A failed KVM
ioctl is a :class:`KvmError`, which is also an ``OSError`` with the real errno.
Only the CLI turns these into messages and exit codes.
"""
from __future__ import annotations

import errno as _errno
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Callable, Optional


class PyvmmError(Exception):
    """Base of every error pyvmm raises on purpose."""

    exit_status = 1

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageProblem(PyvmmError):
    """The user asked for something impossible (bad option value, bad file)."""

    exit_status = 2


class SnapshotError(UsageProblem):
    """A snapshot that cannot be used: truncated, altered, newer, malformed,
    or not one. Exit status 2, like every other malformed input file.
    (Here, not in :mod:`pyvmm.snapshot.format`, so that code catching it
    need not load the snapshot modules.)"""


class HostUnsupported(PyvmmError):
    """The host (kernel, CPU, permissions) cannot do what was asked."""


class GuestError(PyvmmError):
    """The guest did something pyvmm cannot continue from."""


class KvmError(OSError, PyvmmError):
    """A KVM ioctl failed. ``errno`` is the kernel's; the message names the
    ioctl, the target (``vm``, ``vcpu2``, ``vgic-v3``) and the register."""

    exit_status = 1

    def __init__(self, err: int, ioctl: str, target: str, reg: Optional[str] = None,
                 hint: Optional[str] = None, explain: Optional[Callable[[], Optional[str]]] = None):
        what = f"{ioctl} on {target}"
        if reg:
            what += f" (reg {reg})"
        message = f"{what} failed: {_errno.errorcode.get(err, str(err))} ({os.strerror(err)})"
        OSError.__init__(self, err, message)
        self.message = message
        self._hint, self._explain = hint, explain
        self.ioctl = ioctl
        self.target = target
        self.reg = reg

    @property  # PyvmmError's attribute, worked out when first read
    def hint(self) -> Optional[str]:
        """``explain()`` when given (called on first use: a failure that is caught, such as
        the SME probe's, never loads the explanations), else the ``hint`` given."""
        if self._explain is not None:
            self._hint, self._explain = self._explain(), None
        return self._hint

    @hint.setter
    def hint(self, value: Optional[str]) -> None:
        self._hint, self._explain = value, None

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}: {self.hint}"
        return self.message

    def __reduce__(self):
        return (type(self), (self.errno, self.ioctl, self.target, self.reg, self.hint))

"""pyvmm: a Python virtual machine monitor for arm64 KVM with first-class SVE
and SME guest state.

The public names below come from :mod:`pyvmm.api`, the library's surface for
live state save/restore: :func:`start` (boot) a machine from a :class:`MachineConfig`
(or :func:`restore` one from a snapshot file) and drive the
:class:`VirtualMachine` it returns from any thread: pause, resume,
snapshot, read and write a vCPU's registers and vector state, wait for the
end. They are loaded on first use, so ``import pyvmm`` (and the command
line) stay quick.

Lower levels stay available for tools that need them: :func:`pyvmm.kvm.open_kvm`
(system fd) → :class:`pyvmm.vm.Vm` → :class:`pyvmm.vcpu.Vcpu`; register ids in
:mod:`pyvmm.arm64.regs`; SME discovery and vector lengths in :mod:`pyvmm.sme`.
"""
TYPE_CHECKING = False  # typing.TYPE_CHECKING without loading typing (type checkers read it as True)

__all__ = [
    "start", "restore", "incoming", "VirtualMachine",
    "MachineConfig", "DiskSpec", "ExitStatus", "Outcome", "SaveReport", "SavedVecState",
    "PyvmmError", "UsageProblem", "HostUnsupported", "GuestError", "KvmError", "SnapshotError",
    "__version__",
]

if TYPE_CHECKING:  # what type checkers and readers see; at run time __getattr__ loads them
    from typing import Any

    from ._version import __version__
    from .api import (DiskSpec, ExitStatus, GuestError, HostUnsupported, KvmError, MachineConfig, Outcome,
                      PyvmmError, SaveReport, SavedVecState, SnapshotError, UsageProblem, VirtualMachine, incoming,
                      restore, start)


def __getattr__(name: str) -> "Any":
    """The public names of :mod:`pyvmm.api` and ``__version__``, imported when first used (PEP 562)."""
    if name == "__version__":
        from ._version import __version__ as value
    elif name in __all__:
        from . import api

        value = getattr(api, name)
    else:
        raise AttributeError(f"module 'pyvmm' has no attribute {name!r}")
    globals()[name] = value
    return value

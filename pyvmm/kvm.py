"""The system fd: ``/dev/kvm``."""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Dict, Optional

from ._fd import KvmFd
from ._ffi import const
from .errors import HostUnsupported

DEFAULT_PATH = "/dev/kvm"
_ELSEWHERE = ("pyvmm needs an arm64 Linux host with KVM; on any other machine run it "
              "inside the test machine: ci/qemu-aarch64/run -- pyvmm ...")


class Kvm(KvmFd):
    """``/dev/kvm``. Children: :class:`pyvmm.vm.Vm` via :meth:`create_vm`."""

    target = "kvm"

    def __init__(self, path: str = DEFAULT_PATH):
        machine = os.uname().machine
        if machine not in ("aarch64", "arm64"):
            raise HostUnsupported(f"this host is {machine}, not arm64", _ELSEWHERE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HostUnsupported(f"{path} does not exist (KVM is not available)", _ELSEWHERE) from None
        except PermissionError:
            raise HostUnsupported(
                f"permission denied opening {path}",
                "add your user to the group that owns it (usually 'kvm') or run as root") from None
        except OSError as e:
            raise HostUnsupported(f"cannot open {path}: {e.strerror}", _ELSEWHERE) from None
        super().__init__(fd)
        self.path = path
        # Host facts probed through this handle (sme.discover): the module
        # behind an open /dev/kvm cannot change, so they hold while it is open.
        self.probed: Dict[Any, Any] = {}
        self._caps: Dict[int, int] = {}  # KVM_CHECK_EXTENSION's answers, by capability (the same reason)
        version = self.get_api_version()
        if version != const("KVM_API_VERSION"):
            self.close()
            raise HostUnsupported(f"KVM API version {version}, pyvmm needs {const('KVM_API_VERSION')}")

    # -- one method per ioctl --------------------------------------------------
    def get_api_version(self) -> int:
        return self.ioctl("KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the system fd, asked once per capability while this handle is
        open (a machine's build asks for some several times; start-up time)."""
        answer = self._caps.get(cap)
        if answer is None:
            answer = self._caps[cap] = self.ioctl("KVM_CHECK_EXTENSION", cap)
        return answer

    def get_vcpu_mmap_size(self) -> int:
        return self.ioctl("KVM_GET_VCPU_MMAP_SIZE")

    def create_vm(self, ipa_bits: Optional[int] = None):
        """KVM_CREATE_VM. ``ipa_bits`` selects the guest physical address size
        (KVM_VM_TYPE_ARM_IPA_SIZE); 0/None takes the default (40 bits)."""
        from .vm import Vm  # noqa: cyclic by design: the parent builds the child

        machine_type = 0
        if ipa_bits:
            limit = self.check_extension(const("KVM_CAP_ARM_VM_IPA_SIZE"))
            if limit and ipa_bits > limit:
                raise HostUnsupported(f"IPA size {ipa_bits} bits is above this host's {limit}")
            machine_type = ipa_bits & 0xFF
        fd = self.ioctl("KVM_CREATE_VM", machine_type)
        return Vm(self, fd)


def open_kvm(path: str = DEFAULT_PATH) -> Kvm:
    return Kvm(path)


__all__ = ["Kvm", "open_kvm", "DEFAULT_PATH"]

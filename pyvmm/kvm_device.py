"""A device fd from KVM_CREATE_DEVICE (e.g. the in-kernel vGICv3)."""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

from ._fd import KvmFd
from ._ffi import ffi

_NAMES = {5: "vgic-v2", 7: "vgic-v3", 8: "vgic-its"}


class DeviceAttrs:
    """KVM_{SET,GET,HAS}_DEVICE_ATTR, shared by device fds and vCPU fds."""

    ioctl: Callable[..., int]  # from KvmFd, which every class mixing this in also is

    def _attr(self, group: int, attr: int, value_ptr=None):
        a = ffi.new("struct kvm_device_attr *")
        a.group, a.attr = group, attr
        if value_ptr is not None:
            a.addr = int(ffi.cast("uintptr_t", value_ptr))
        return a

    def has_device_attr(self, group: int, attr: int) -> bool:
        from .errors import KvmError

        try:
            self.ioctl("KVM_HAS_DEVICE_ATTR", self._attr(group, attr))
            return True
        except KvmError:
            return False

    def set_device_attr(self, group: int, attr: int, value=None, ctype: str = "uint64_t") -> None:
        """Set an attribute; ``value`` None passes addr=0 (e.g. CTRL_INIT)."""
        if value is None:
            self.ioctl("KVM_SET_DEVICE_ATTR", self._attr(group, attr))
            return
        buf = ffi.new(f"{ctype} *", value)
        self.ioctl("KVM_SET_DEVICE_ATTR", self._attr(group, attr, buf))

    def get_device_attr(self, group: int, attr: int, ctype: str = "uint64_t") -> int:
        buf = ffi.new(f"{ctype} *")
        self.ioctl("KVM_GET_DEVICE_ATTR", self._attr(group, attr, buf))
        return buf[0]


class Device(DeviceAttrs, KvmFd):
    def __init__(self, vm, fd: int, dev_type: int):
        KvmFd.__init__(self, fd)
        self.vm = vm
        self.type = dev_type
        self.target = _NAMES.get(dev_type, f"device{dev_type}")

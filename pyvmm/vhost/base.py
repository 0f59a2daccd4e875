"""What every kernel vhost fd has (include/uapi/linux/vhost.h): ownership,
features, the memory table and the vrings. One method per ioctl; the net
and vsock fds add their own (vhost/net.py, vhost/vsock.py)."""
from __future__ import annotations

import errno
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Iterable, Tuple

from .._fd import KvmFd
from .._ffi import ffi
from ..errors import HostUnsupported

VHOST_VRING_F_LOG = 0  # include/uapi/linux/vhost_types.h: a bit number of vhost_vring_addr.flags
VHOST_F_LOG_ALL = 26  # the feature bit that turns the dirty log on


def open_node(path: str, what: str, module: str, alternative: str) -> int:
    """Open a vhost device node, or HostUnsupported saying what to do."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostUnsupported(f"{what}: {path} does not exist",
                              f"load the {module} module (modprobe {module}){alternative}") from None
    except PermissionError:
        raise HostUnsupported(f"{what}: no permission to open {path}",
                              f"run as root or give this user access to {path}{alternative}") from None
    except OSError as e:
        raise HostUnsupported(f"{what}: cannot open {path}: {e.strerror}") from None


class VhostFd(KvmFd):
    """A vhost device fd. ``set_owner`` binds it to this process (its worker
    thread then serves the rings with this process's memory)."""

    target = "vhost"
    PATH = ""
    # (the device it serves, the module that provides it, what else to do) for errors
    NODE_HELP = ("", "", "")

    @classmethod
    def open(cls, path: str = ""):
        """Open the device node and become its owner."""
        what, module, alternative = cls.NODE_HELP
        v = cls(open_node(path or cls.PATH, what, module, alternative))
        try:
            v.set_owner()
        except OSError:
            v.close()
            raise
        return v

    def set_owner(self) -> None:
        self.ioctl("VHOST_SET_OWNER")

    def get_features(self) -> int:
        v = ffi.new("uint64_t *")
        self.ioctl("VHOST_GET_FEATURES", v)
        return v[0]

    def set_features(self, features: int) -> None:
        v = ffi.new("uint64_t *", features)
        self.ioctl("VHOST_SET_FEATURES", v)

    def set_mem_table(self, regions: Iterable[Tuple[int, ...]]) -> None:
        """regions: (guest physical address, size, address in this process,
        ...); the kernel reads guest RAM through this process's mappings."""
        regions = list(regions)
        m = ffi.new("struct vhost_memory *", {"nregions": len(regions), "regions": len(regions)})
        for i, (gpa, size, hva, *_) in enumerate(regions):
            r = m.regions[i]
            r.guest_phys_addr, r.memory_size, r.userspace_addr, r.flags_padding = gpa, size, hva, 0
        self.ioctl("VHOST_SET_MEM_TABLE", m)

    def _state(self, name: str, index: int, num: int = 0) -> int:
        s = ffi.new("struct vhost_vring_state *")
        s.index, s.num = index, num
        self.ioctl(name, s)
        return s.num

    def set_vring_num(self, index: int, num: int) -> None:
        self._state("VHOST_SET_VRING_NUM", index, num)

    def set_vring_base(self, index: int, base: int) -> None:
        """The ring's next available index to serve (the device's last_avail)."""
        self._state("VHOST_SET_VRING_BASE", index, base)

    def get_vring_base(self, index: int) -> int:
        return self._state("VHOST_GET_VRING_BASE", index)

    def set_vring_addr(self, index: int, desc: int, avail: int, used: int, log_used: int = -1) -> None:
        """Ring addresses in this process (vhost translates them, not guest
        addresses). ``log_used``: the used ring's guest physical address,
        whose writes vhost then logs (flag VHOST_VRING_F_LOG); -1: not logged."""
        a = ffi.new("struct vhost_vring_addr *")
        a.index, a.flags = index, (1 << VHOST_VRING_F_LOG) if log_used >= 0 else 0
        a.desc_user_addr, a.avail_user_addr, a.used_user_addr = desc, avail, used
        a.log_guest_addr = max(log_used, 0)
        self.ioctl("VHOST_SET_VRING_ADDR", a)

    def set_log_base(self, address: int) -> None:
        """The dirty bitmap vhost logs its writes to guest RAM in (one bit per
        4 KiB of guest physical address, pyvmm/vhost/dirty.py), at
        ``address`` in this process."""
        self.ioctl("VHOST_SET_LOG_BASE", ffi.new("uint64_t *", address))

    def _file(self, name: str, index: int, fd: int) -> None:
        f = ffi.new("struct vhost_vring_file *")
        f.index, f.fd = index, fd
        self.ioctl(name, f)

    def set_vring_kick(self, index: int, fd: int) -> None:
        """The eventfd the guest's notifies signal (KVM_IOEVENTFD)."""
        self._file("VHOST_SET_VRING_KICK", index, fd)

    def set_vring_call(self, index: int, fd: int) -> None:
        """The eventfd vhost signals for an interrupt (KVM_IRQFD)."""
        self._file("VHOST_SET_VRING_CALL", index, fd)


def is_busy(e: OSError) -> bool:
    return e.errno in (errno.EADDRINUSE, errno.EBUSY)

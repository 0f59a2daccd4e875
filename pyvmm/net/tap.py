"""The tun fd of a tap interface (include/uapi/linux/if_tun.h,
Documentation/networking/tuntap.rst).

Opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR: frames carry a 12-byte
virtio-net header (TUNSETVNETHDRSZ), which is what the virtio 1 driver puts
in front of every packet, so vhost-net (or the Python backend) passes them
through unchanged. TUNSETIFF on a name that does not exist creates a
non-persistent tap, which the kernel removes when its last fd closes; an
existing tap (``ip tuntap add NAME mode tap``) is attached to and left alone.
"""
from __future__ import annotations

import errno
import os
import re

from .._fd import KvmFd
from .._ffi import const, ffi
from ..errors import HostUnsupported, UsageProblem

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16
VNET_HDR_LEN = 12  # struct virtio_net_hdr_v1 (virtio 1.2, 5.1.6)
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
SYS_NET = "/sys/class/net"


def check_name(name: str) -> None:
    if not _NAME.match(name) or name in (".", ".."):
        raise UsageProblem(f"tap={name!r}: an interface name is 1 to 15 letters, digits, '_', '.' or '-'")


def interface_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SYS_NET, name))


# include/uapi/linux/if_tun.h (not in the cffi definitions: plain numbers)
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400


def tun_flags(name: str) -> int:
    """The interface's tun_flags (0: not a tun/tap device, or gone)."""
    try:
        with open(os.path.join(SYS_NET, name, "tun_flags")) as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return 0


def enabled_queues(name: str) -> int:
    """How many queues of the tap are attached and enabled: the tap sets its
    real transmit queue count to that (tun_set_real_num_queues), which sysfs
    shows as queues/tx-N (at least one)."""
    try:
        return sum(1 for q in os.listdir(os.path.join(SYS_NET, name, "queues")) if q.startswith("tx-"))
    except OSError:
        return 0


def is_tap(name: str) -> bool:
    """The interface is a tun/tap device in tap mode (tun_flags has IFF_TAP)."""
    return bool(tun_flags(name) & const("IFF_TAP"))


class Tap(KvmFd):
    """An open tap. ``created``: pyvmm made the interface (it goes away with the fd)."""

    target = "tap"

    def __init__(self, fd: int, name: str, created: bool):
        super().__init__(fd)
        self.name = name
        self.created = created
        self.multi_queue = False
        self.target = f"tap {name}"

    @classmethod
    def open(cls, name: str, shared: bool = False) -> "Tap":
        """Attach to tap ``name`` (created if missing). A multi-queue tap
        whose queue another process holds is refused unless ``shared`` (a
        live migration's destination on the source's host)."""
        check_name(name)
        existed = interface_exists(name)
        if existed and not is_tap(name):
            raise UsageProblem(f"tap={name}: {name} exists and is not a tap interface",
                               "name a tap (ip tuntap add NAME mode tap) or a free name for pyvmm to create")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise HostUnsupported(f"tap={name}: {TUN_PATH} does not exist", "load the tun module (modprobe tun)") \
                from None
        except PermissionError:
            raise HostUnsupported(f"tap={name}: no permission to open {TUN_PATH}") from None
        tap = cls(fd, name, not existed)
        # A tap pyvmm creates is multi-queue: a live migration's destination
        # on this host attaches a second queue to it while the source still
        # holds its own (docs/migration.md). An existing tap is opened as it
        # was made (TUNSETIFF refuses the other kind).
        mq = IFF_MULTI_QUEUE if not existed or tun_flags(name) & IFF_MULTI_QUEUE else 0
        try:
            tap.tunsetiff(const("IFF_TAP") | const("IFF_NO_PI") | const("IFF_VNET_HDR") | mq)
            tap.multi_queue = bool(mq)
            if mq and existed and not shared and enabled_queues(name) > 1:
                tap.close()
                raise HostUnsupported(f"tap={name}: the tap is in use by another process",
                                      "give this VM a tap of its own")
            tap.tunsetvnethdrsz(VNET_HDR_LEN)
        except OSError as e:
            tap.close()
            if e.errno == errno.EPERM:
                raise HostUnsupported(
                    f"tap={name}: no permission to {'use' if existed else 'create'} the tap",
                    "run as root (CAP_NET_ADMIN), or create it for this user first: "
                    f"ip tuntap add {name} mode tap user $USER") from None
            if e.errno == errno.EBUSY:
                raise HostUnsupported(f"tap={name}: the tap is in use by another process",
                                      "give this VM a tap of its own (a migration on one host needs a multi-queue "
                                      f"tap: ip tuntap add {name} mode tap multi_queue)") from None
            raise
        return tap

    # -- one method per ioctl ----------------------------------------------------
    def tunsetiff(self, flags: int) -> None:
        ifr = ffi.new("char[40]")  # struct ifreq: ifr_name[16], then ifr_flags (short)
        name = self.name.encode()
        ffi.memmove(ifr, name, len(name))
        ffi.cast("short *", ifr + IFNAMSIZ)[0] = flags
        self.ioctl("TUNSETIFF", ifr)

    def tunsetqueue(self, enable: bool) -> None:
        """Enable (IFF_ATTACH_QUEUE) or disable (IFF_DETACH_QUEUE) this fd's
        queue of a multi-queue tap: a disabled queue is given no packets."""
        ifr = ffi.new("char[40]")
        ffi.cast("short *", ifr + IFNAMSIZ)[0] = IFF_ATTACH_QUEUE if enable else IFF_DETACH_QUEUE
        self.ioctl("TUNSETQUEUE", ifr)

    def tunsetvnethdrsz(self, size: int) -> None:
        self.ioctl("TUNSETVNETHDRSZ", ffi.new("int *", size))

    def tunsetoffload(self, flags: int) -> None:
        """What the tap may hand us: TUN_F_CSUM (partial checksums), TSO4/6,
        TSO_ECN. The value is passed directly, not through a pointer."""
        self.ioctl("TUNSETOFFLOAD", flags)

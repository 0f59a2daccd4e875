"""Every KVM (and vhost, tun) request number pyvmm issues, built in one table from
``_IO/_IOR/_IOW/_IOWR`` and the argument type, as include/uapi/linux/kvm.h does.

arm64 uses the generic ioctl encoding (include/uapi/asm-generic/ioctl.h):
``dir << 30 | size << 16 | type << 8 | nr`` with dir NONE=0, WRITE=1, READ=2.
The comment after each entry names the fd it applies to and, where it is not
part of the base API, the capability that makes it available.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ._ffi import ffi
from ._record import tuple_record

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE
VHOST_VIRTIO = 0xAF  # include/uapi/linux/vhost.h
TUN_TYPE = ord("T")  # include/uapi/linux/if_tun.h


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    if not 0 <= size < (1 << 14):
        raise ValueError(f"ioctl argument size {size} does not fit in 14 bits")
    return (direction << 30) | (size << 16) | (typ << 8) | nr


if TYPE_CHECKING:
    class Request(NamedTuple):
        name: str
        number: int
        argtype: Optional[str]  # C type of the argument, None for _IO
else:  # the same class without importing typing (start-up time)
    Request = tuple_record("Request", "name number argtype", module=__name__)


# Each entry is (name, direction, nr, argument type, ioctl type); its number
# (which needs the argument's size from cffi) is worked out on first use, so
# importing this module costs no C type lookups.
if TYPE_CHECKING:
    _Spec = Tuple[str, int, int, Optional[str], int]


def _IO(name, nr, typ=KVMIO) -> _Spec:
    return (name, _IOC_NONE, nr, None, typ)


def _IOR(name, nr, argtype, typ=KVMIO) -> _Spec:
    return (name, _IOC_READ, nr, argtype, typ)


def _IOW(name, nr, argtype, typ=KVMIO) -> _Spec:
    return (name, _IOC_WRITE, nr, argtype, typ)


def _IOWR(name, nr, argtype, typ=KVMIO) -> _Spec:
    return (name, _IOC_READ | _IOC_WRITE, nr, argtype, typ)


_TABLE: List[_Spec] = [
    # system fd (/dev/kvm)
    _IO("KVM_GET_API_VERSION", 0x00),
    _IO("KVM_CREATE_VM", 0x01),
    _IO("KVM_CHECK_EXTENSION", 0x03),  # also on the VM fd: KVM_CAP_CHECK_EXTENSION_VM
    _IO("KVM_GET_VCPU_MMAP_SIZE", 0x04),
    # VM fd
    _IO("KVM_CREATE_VCPU", 0x41),
    _IOW("KVM_SET_USER_MEMORY_REGION", 0x46, "struct kvm_userspace_memory_region"),
    _IOW("KVM_GET_DIRTY_LOG", 0x42, "struct kvm_dirty_log"),
    _IOWR("KVM_CLEAR_DIRTY_LOG", 0xC0, "struct kvm_clear_dirty_log"),  # KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
    _IOW("KVM_REGISTER_COALESCED_MMIO", 0x67, "struct kvm_coalesced_mmio_zone"),  # KVM_CAP_COALESCED_MMIO
    _IOW("KVM_IRQ_LINE", 0x61, "struct kvm_irq_level"),  # KVM_CAP_IRQCHIP
    _IOW("KVM_SET_GSI_ROUTING", 0x6A, "struct kvm_irq_routing"),  # KVM_CAP_IRQ_ROUTING
    _IOW("KVM_IRQFD", 0x76, "struct kvm_irqfd"),  # KVM_CAP_IRQFD
    _IOW("KVM_IOEVENTFD", 0x79, "struct kvm_ioeventfd"),  # KVM_CAP_IOEVENTFD
    _IOW("KVM_ENABLE_CAP", 0xA3, "struct kvm_enable_cap"),  # KVM_CAP_ENABLE_CAP_VM
    _IOR("KVM_ARM_PREFERRED_TARGET", 0xAF, "struct kvm_vcpu_init"),
    _IOW("KVM_ARM_SET_COUNTER_OFFSET", 0xB5, "struct kvm_arm_counter_offset"),  # KVM_CAP_COUNTER_OFFSET
    _IOWR("KVM_CREATE_DEVICE", 0xE0, "struct kvm_create_device"),  # KVM_CAP_DEVICE_CTRL
    # vCPU fd
    _IO("KVM_RUN", 0x80),
    _IOR("KVM_GET_MP_STATE", 0x98, "struct kvm_mp_state"),
    _IOW("KVM_SET_MP_STATE", 0x99, "struct kvm_mp_state"),
    _IOR("KVM_GET_VCPU_EVENTS", 0x9F, "struct kvm_vcpu_events"),  # KVM_CAP_VCPU_EVENTS
    _IOW("KVM_SET_VCPU_EVENTS", 0xA0, "struct kvm_vcpu_events"),  # KVM_CAP_VCPU_EVENTS
    _IOW("KVM_GET_ONE_REG", 0xAB, "struct kvm_one_reg"),  # KVM_CAP_ONE_REG
    _IOW("KVM_SET_ONE_REG", 0xAC, "struct kvm_one_reg"),  # KVM_CAP_ONE_REG
    _IOW("KVM_ARM_VCPU_INIT", 0xAE, "struct kvm_vcpu_init"),
    _IOWR("KVM_GET_REG_LIST", 0xB0, "struct kvm_reg_list"),
    _IOW("KVM_ARM_VCPU_FINALIZE", 0xC2, "int"),  # KVM_CAP_ARM_SVE (and SME)
    # device fd (and vCPU fd for KVM_CAP_VCPU_ATTRIBUTES)
    _IOW("KVM_SET_DEVICE_ATTR", 0xE1, "struct kvm_device_attr"),
    _IOW("KVM_GET_DEVICE_ATTR", 0xE2, "struct kvm_device_attr"),
    _IOW("KVM_HAS_DEVICE_ATTR", 0xE3, "struct kvm_device_attr"),
    # vhost fds (/dev/vhost-net, /dev/vhost-vsock): include/uapi/linux/vhost.h
    _IOR("VHOST_GET_FEATURES", 0x00, "uint64_t", VHOST_VIRTIO),
    _IOW("VHOST_SET_FEATURES", 0x00, "uint64_t", VHOST_VIRTIO),
    _IO("VHOST_SET_OWNER", 0x01, VHOST_VIRTIO),
    _IO("VHOST_RESET_OWNER", 0x02, VHOST_VIRTIO),
    _IOW("VHOST_SET_MEM_TABLE", 0x03, "struct vhost_memory", VHOST_VIRTIO),
    _IOW("VHOST_SET_LOG_BASE", 0x04, "uint64_t", VHOST_VIRTIO),
    _IOW("VHOST_SET_VRING_NUM", 0x10, "struct vhost_vring_state", VHOST_VIRTIO),
    _IOW("VHOST_SET_VRING_ADDR", 0x11, "struct vhost_vring_addr", VHOST_VIRTIO),
    _IOW("VHOST_SET_VRING_BASE", 0x12, "struct vhost_vring_state", VHOST_VIRTIO),
    _IOWR("VHOST_GET_VRING_BASE", 0x12, "struct vhost_vring_state", VHOST_VIRTIO),
    _IOW("VHOST_SET_VRING_KICK", 0x20, "struct vhost_vring_file", VHOST_VIRTIO),
    _IOW("VHOST_SET_VRING_CALL", 0x21, "struct vhost_vring_file", VHOST_VIRTIO),
    _IOW("VHOST_NET_SET_BACKEND", 0x30, "struct vhost_vring_file", VHOST_VIRTIO),  # vhost-net
    _IOW("VHOST_VSOCK_SET_GUEST_CID", 0x60, "uint64_t", VHOST_VIRTIO),  # vhost-vsock
    _IOW("VHOST_VSOCK_SET_RUNNING", 0x61, "int", VHOST_VIRTIO),  # vhost-vsock
    # tun fd (/dev/net/tun): include/uapi/linux/if_tun.h. TUNSETIFF's declared
    # argument type is int for history; it takes a struct ifreq.
    _IOW("TUNSETIFF", 202, "int", TUN_TYPE),
    _IOW("TUNSETPERSIST", 203, "int", TUN_TYPE),
    _IOR("TUNGETFEATURES", 207, "unsigned int", TUN_TYPE),
    _IOW("TUNSETOFFLOAD", 208, "unsigned int", TUN_TYPE),
    _IOW("TUNSETVNETHDRSZ", 216, "int", TUN_TYPE),
    _IOW("TUNSETQUEUE", 217, "int", TUN_TYPE),  # takes a struct ifreq too
]

_SPECS: Dict[str, _Spec] = {spec[0]: spec for spec in _TABLE}
_made: Dict[str, Request] = {}


def request(name: str) -> Request:
    """The request ``name`` (KeyError for a name not in the table)."""
    r = _made.get(name)
    if r is None:
        _, direction, nr, argtype, typ = _SPECS[name]
        size = ffi.sizeof(argtype) if argtype is not None else 0
        r = _made[name] = Request(name, _ioc(direction, typ, nr, size), argtype)
    return r


def __getattr__(name: str) -> Any:
    """``REQUESTS``: every request by name (built when first asked for)."""
    if name == "REQUESTS":
        return {n: request(n) for n in _SPECS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The VM fd."""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import List, Optional

from ._fd import KvmFd
from ._ffi import const, ffi


class Vm(KvmFd):
    """A VM. Children: :class:`pyvmm.vcpu.Vcpu` and :class:`pyvmm.kvm_device.Device`."""

    target = "vm"

    def __init__(self, kvm, fd: int):
        super().__init__(fd)
        self.kvm = kvm
        self.vcpus: List = []
        self._target: Optional[int] = None  # KVM_ARM_PREFERRED_TARGET's, asked once (it is the host CPU's)

    # -- one method per ioctl --------------------------------------------------
    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (answers for this VM's type)."""
        return self.ioctl("KVM_CHECK_EXTENSION", cap)

    def create_vcpu(self, index: int):
        from .vcpu import Vcpu

        fd = self.ioctl("KVM_CREATE_VCPU", index)
        vcpu = Vcpu(self, index, fd, self.kvm.get_vcpu_mmap_size())
        self.vcpus.append(vcpu)
        return vcpu

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        r = ffi.new("struct kvm_userspace_memory_region *")
        r.slot, r.flags = slot, flags
        r.guest_phys_addr, r.memory_size, r.userspace_addr = guest_phys_addr, memory_size, userspace_addr
        self.ioctl("KVM_SET_USER_MEMORY_REGION", r)

    def get_dirty_log(self, slot: int, bitmap) -> None:
        """KVM_GET_DIRTY_LOG: fill ``bitmap`` (a writable buffer of one bit per
        page of the slot, rounded up to 64-bit words) with the pages written
        since the last call (or, with manual protection, the last clear)."""
        d = ffi.new("struct kvm_dirty_log *")
        d.slot = slot
        d.dirty_bitmap = ffi.from_buffer(bitmap)
        self.ioctl("KVM_GET_DIRTY_LOG", d)

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap) -> None:
        """KVM_CLEAR_DIRTY_LOG (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): write-protect
        again the pages of ``bitmap`` (bit 0 = ``first_page``, a multiple of 64)
        so that a later write to them is logged."""
        d = ffi.new("struct kvm_clear_dirty_log *")
        d.slot, d.first_page, d.num_pages = slot, first_page, num_pages
        d.dirty_bitmap = ffi.from_buffer(bitmap)
        self.ioctl("KVM_CLEAR_DIRTY_LOG", d)

    def arm_preferred_target(self):
        """KVM_ARM_PREFERRED_TARGET: a kvm_vcpu_init with the target to use."""
        init = ffi.new("struct kvm_vcpu_init *")
        self.ioctl("KVM_ARM_PREFERRED_TARGET", init)
        return init

    def preferred_target(self) -> int:
        """The target of :meth:`arm_preferred_target`, asked once per VM."""
        if self._target is None:
            self._target = self.arm_preferred_target().target
        return self._target

    def create_device(self, dev_type: int, test: bool = False):
        from .kvm_device import Device

        cd = ffi.new("struct kvm_create_device *")
        cd.type = dev_type
        cd.flags = const("KVM_CREATE_DEVICE_TEST") if test else 0
        self.ioctl("KVM_CREATE_DEVICE", cd)
        if test:
            return None
        return Device(self, cd.fd, dev_type)

    def irq_line(self, irq: int, level: int) -> None:
        il = ffi.new("struct kvm_irq_level *")
        il.irq, il.level = irq, level
        self.ioctl("KVM_IRQ_LINE", il)

    def arm_set_counter_offset(self, offset: int) -> None:
        co = ffi.new("struct kvm_arm_counter_offset *")
        co.counter_offset = offset
        self.ioctl("KVM_ARM_SET_COUNTER_OFFSET", co)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        ec = ffi.new("struct kvm_enable_cap *")
        ec.cap, ec.flags = cap, flags
        for i, a in enumerate(args):
            ec.args[i] = a
        self.ioctl("KVM_ENABLE_CAP", ec)

    def irqfd(self, fd: int, gsi: int, flags: int = 0, resamplefd: int = 0) -> None:
        """KVM_IRQFD: signalling eventfd ``fd`` injects GSI ``gsi`` (arm64: SPI
        number, INTID - 32, through the vGIC's default routing)."""
        a = ffi.new("struct kvm_irqfd *")
        a.fd, a.gsi, a.flags, a.resamplefd = fd, gsi, flags, resamplefd
        self.ioctl("KVM_IRQFD", a)

    def set_gsi_routing(self, entries) -> None:
        """KVM_SET_GSI_ROUTING: the whole routing table (it replaces the one
        KVM holds) from ``entries``, each (gsi, type, flags, a, b, c, d):
        an irqchip route's (irqchip, pin, 0, 0) or an MSI route's
        (address_lo, address_hi, data, devid)."""
        r = ffi.new("struct kvm_irq_routing *", {"entries": len(entries)})  # the flexible array's length
        r.nr, r.flags = len(entries), 0
        for e, (gsi, kind, flags, a, b, c, d) in zip(r.entries, entries):
            e.gsi, e.type, e.flags = gsi, kind, flags
            if kind == const("KVM_IRQ_ROUTING_MSI"):
                e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data, e.u.msi.devid = a, b, c, d
            else:
                e.u.irqchip.irqchip, e.u.irqchip.pin = a, b
        self.ioctl("KVM_SET_GSI_ROUTING", r)

    def ioeventfd(self, addr: int, length: int, fd: int, datamatch: Optional[int] = None,
                  flags: int = 0) -> None:
        a = ffi.new("struct kvm_ioeventfd *")
        a.addr, a.len, a.fd, a.flags = addr, length, fd, flags
        if datamatch is not None:
            a.datamatch = datamatch
            a.flags |= 1  # KVM_IOEVENTFD_FLAG_DATAMATCH
        self.ioctl("KVM_IOEVENTFD", a)

    def register_coalesced_mmio(self, addr: int, size: int) -> None:
        """KVM_REGISTER_COALESCED_MMIO: guest writes to [addr, addr+size) go to
        the coalesced ring instead of exiting (KVM_CAP_COALESCED_MMIO)."""
        zone = ffi.new("struct kvm_coalesced_mmio_zone *")
        zone.addr, zone.size = addr, size
        self.ioctl("KVM_REGISTER_COALESCED_MMIO", zone)

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.vcpus = []
        super().close()

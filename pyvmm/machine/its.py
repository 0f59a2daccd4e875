"""The in-kernel GICv3 ITS (KVM_DEV_TYPE_ARM_VGIC_ITS): it turns the MSIs of
PCI functions (writes of an event id to GITS_TRANSLATER, tagged with the
function's device id) into LPIs. pyvmm never sends one itself: each MSI-X
vector is a KVM_IRQFD on a GSI that KVM_SET_GSI_ROUTING routes as an MSI
(pyvmm/machine/gsi_routes.py), injected by KVM through this ITS.

Documentation/virt/kvm/devices/arm-vgic-its.rst: create the device, set its
base (KVM_DEV_ARM_VGIC_GRP_ADDR / KVM_VGIC_ITS_ADDR_TYPE, 64 KiB aligned),
then KVM_DEV_ARM_VGIC_CTRL_INIT. QEMU's and kvmtool's order, followed here:
after the vGICv3's own CTRL_INIT (:meth:`VgicV3.init`), before any vCPU runs.
Its tables (device, collection, ITT, LPI pending) live in guest RAM, where
the guest's ITS driver puts them; KVM's save/restore of them
(GRP_ITS_REGS, KVM_DEV_ARM_ITS_SAVE_TABLES) is not used yet, so a machine
with an ITS is neither snapshotted nor migrated.
"""
from __future__ import annotations

from .._ffi import const
from ..boot import fdt, layout
from ..errors import HostUnsupported, KvmError

PHANDLE_ITS = 3  # beside fdt.PHANDLE_GIC and fdt.PHANDLE_APB_CLOCK

# What the ITS path needs from KVM beyond the vGIC: irqfds, routing of GSIs
# as MSIs, and (asked once the ITS exists: KVM answers it per VM, set when
# an ITS is created) MSIs that carry a device id, which the ITS requires.
CAPS = ("KVM_CAP_IRQFD", "KVM_CAP_IOEVENTFD", "KVM_CAP_IRQ_ROUTING")
CAPS_WITH_ITS = ("KVM_CAP_MSI_DEVID",)


def missing_caps(vm, caps=CAPS):
    """The capabilities of ``caps`` this VM's KVM does not offer."""
    return [c for c in caps if vm.check_extension(const(c)) <= 0]


class VgicIts:
    """One ITS at layout.ITS_BASE, created after the vGIC's CTRL_INIT."""

    def __init__(self, vm):
        missing = missing_caps(vm)
        if missing:
            raise HostUnsupported(f"PCI devices need {', '.join(missing)}, which this host's KVM does not offer",
                                  "use the default transport (virtio-mmio)")
        try:
            self.device = vm.create_device(const("KVM_DEV_TYPE_ARM_VGIC_ITS"))
        except KvmError as e:
            raise HostUnsupported(f"this host's KVM cannot create a GICv3 ITS ({e.message}), which PCI devices "
                                  "need for MSI-X", "use the default transport (virtio-mmio)") from None
        try:
            self.device.set_device_attr(const("KVM_DEV_ARM_VGIC_GRP_ADDR"), const("KVM_VGIC_ITS_ADDR_TYPE"),
                                        layout.ITS_BASE)
            self.device.set_device_attr(const("KVM_DEV_ARM_VGIC_GRP_CTRL"), const("KVM_DEV_ARM_VGIC_CTRL_INIT"))
            missing = missing_caps(vm, CAPS_WITH_ITS)
            if missing:
                raise HostUnsupported(f"PCI devices need {', '.join(missing)} with an ITS, which this host's KVM "
                                      "does not offer", "use the default transport (virtio-mmio)")
        except BaseException:
            self.device.close()
            raise

    def close(self) -> None:
        self.device.close()


def dt_node() -> fdt.Node:
    """The ITS as a child of the GIC node (arm,gic-v3.yaml: "msi-controller"
    subnodes, #msi-cells = 1: the device id)."""
    return (fdt.Node(f"msi-controller@{layout.ITS_BASE:x}")
            .prop("compatible", "arm,gic-v3-its")
            .prop("msi-controller")
            .prop("#msi-cells", 1)
            .prop("reg", fdt.reg64((layout.ITS_BASE, layout.ITS_SIZE)))
            .prop("phandle", PHANDLE_ITS))

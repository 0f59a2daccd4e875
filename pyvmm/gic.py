"""The in-kernel vGICv3 (KVM_DEV_TYPE_ARM_VGIC_V3), its place in the memory
map and its device-tree node.

Documentation/virt/kvm/devices/arm-vgic-v3.rst: set the distributor and
redistributor base addresses (KVM_DEV_ARM_VGIC_GRP_ADDR), the number of
interrupts (GRP_NR_IRQS, a multiple of 32 including the 32 private ones),
then KVM_DEV_ARM_VGIC_CTRL_INIT once every vCPU exists.
"""
from __future__ import annotations

from ._ffi import const
from .boot import fdt, layout
from .errors import HostUnsupported, KvmError

NR_IRQS = 128  # 32 private + 96 SPIs: UART (SPI 1) and 32 virtio slots (SPI 16..47)


class VgicV3:
    def __init__(self, vm, ncpus: int):
        self.ncpus = ncpus
        try:
            self.device = vm.create_device(const("KVM_DEV_TYPE_ARM_VGIC_V3"))
        except KvmError as e:
            raise HostUnsupported(f"this host's KVM cannot create an in-kernel GICv3 ({e.message})",
                                  "pyvmm needs a GICv3-capable arm64 host") from None
        grp = const("KVM_DEV_ARM_VGIC_GRP_ADDR")
        self.device.set_device_attr(grp, const("KVM_VGIC_V3_ADDR_TYPE_DIST"), layout.GICD_BASE)
        self.device.set_device_attr(grp, const("KVM_VGIC_V3_ADDR_TYPE_REDIST"), layout.GICR_BASE)
        self.device.set_device_attr(const("KVM_DEV_ARM_VGIC_GRP_NR_IRQS"), 0, NR_IRQS, ctype="uint32_t")

    def init(self) -> None:
        """CTRL_INIT: after all vCPUs are created."""
        self.device.set_device_attr(const("KVM_DEV_ARM_VGIC_GRP_CTRL"), const("KVM_DEV_ARM_VGIC_CTRL_INIT"))

    def dt_node(self) -> fdt.Node:
        return (fdt.Node(f"intc@{layout.GICD_BASE:x}")
                .prop("compatible", "arm,gic-v3")
                .prop("#interrupt-cells", 3)
                .prop("interrupt-controller")
                .prop("#redistributor-regions", 1)
                .prop("reg", fdt.reg64((layout.GICD_BASE, layout.GICD_SIZE),
                                       (layout.GICR_BASE, layout.gicr_size(self.ncpus))))
                .prop("phandle", fdt.PHANDLE_GIC))

    def close(self) -> None:
        self.device.close()


def spi_irq_line(spi: int) -> int:
    """The KVM_IRQ_LINE ``irq`` field for SPI ``spi`` (arm64: type in [27:24],
    vcpu index in [23:16], interrupt number in [15:0]; SPIs use the INTID)."""
    return (const("KVM_ARM_IRQ_TYPE_SPI") << const("KVM_ARM_IRQ_TYPE_SHIFT")) | (layout.SPI_BASE_INTID + spi)

"""The in-kernel vGICv3 (KVM_DEV_TYPE_ARM_VGIC_V3): created, placed, described
in the device tree, saved and restored (:class:`VgicV3`).

Documentation/virt/kvm/devices/arm-vgic-v3.rst: set the distributor and
redistributor base addresses (KVM_DEV_ARM_VGIC_GRP_ADDR), the number of
interrupts (GRP_NR_IRQS, a multiple of 32 including the 32 private ones),
then KVM_DEV_ARM_VGIC_CTRL_INIT once every vCPU exists.

:meth:`VgicV3.save` / :meth:`VgicV3.restore` move the whole in-kernel GIC
state (distributor, redistributors, CPU interfaces, line levels) in and out
as a JSON-serialisable dict, for machine snapshots: the work is done by
:class:`pyvmm.machine.gic_state.VgicState`, loaded on first use (booting a
guest needs none of it; issue 13, item 5: start-up time).
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Dict, List

    from .gic_state import VgicState

from .._ffi import const
from ..boot import fdt, layout
from ..boot.layout import NR_IRQS
from ..errors import HostUnsupported, KvmError


class VgicV3:
    def __init__(self, vm, ncpus: int, nr_irqs: int = NR_IRQS):
        self.ncpus = ncpus
        try:
            self.device = vm.create_device(const("KVM_DEV_TYPE_ARM_VGIC_V3"))
        except KvmError as e:
            raise HostUnsupported(f"this host's KVM cannot create an in-kernel GICv3 ({e.message})",
                                  "pyvmm needs a GICv3-capable arm64 host") from None
        grp = const("KVM_DEV_ARM_VGIC_GRP_ADDR")
        self.device.set_device_attr(grp, const("KVM_VGIC_V3_ADDR_TYPE_DIST"), layout.GICD_BASE)
        self.device.set_device_attr(grp, const("KVM_VGIC_V3_ADDR_TYPE_REDIST"), layout.GICR_BASE)
        self.device.set_device_attr(const("KVM_DEV_ARM_VGIC_GRP_NR_IRQS"), 0, nr_irqs, ctype="uint32_t")

    def init(self) -> None:
        """CTRL_INIT: after all vCPUs are created."""
        self.device.set_device_attr(const("KVM_DEV_ARM_VGIC_GRP_CTRL"), const("KVM_DEV_ARM_VGIC_CTRL_INIT"))

    def dt_node(self, its: bool = False) -> fdt.Node:
        """The GIC; ``its``: with the ITS (pyvmm/machine/its.py) as its child
        (the parent then needs address cells and an identity ``ranges``)."""
        node = (fdt.Node(f"intc@{layout.GICD_BASE:x}")
                .prop("compatible", "arm,gic-v3")
                .prop("#interrupt-cells", 3)
                .prop("interrupt-controller")
                .prop("#redistributor-regions", 1)
                .prop("reg", fdt.reg64((layout.GICD_BASE, layout.GICD_SIZE),
                                       (layout.GICR_BASE, layout.gicr_size(self.ncpus))))
                .prop("phandle", fdt.PHANDLE_GIC))
        if its:
            from . import its as its_mod

            node.prop("#address-cells", 2).prop("#size-cells", 2).prop("ranges")
            node.children.append(its_mod.dt_node())
        return node

    def close(self) -> None:
        self.device.close()

    def nr_irqs(self) -> int:
        """GRP_NR_IRQS as the kernel holds it (32 private + the SPIs)."""
        return int(self.device.get_device_attr(const("KVM_DEV_ARM_VGIC_GRP_NR_IRQS"), 0, ctype="uint32_t"))

    @property
    def state(self) -> VgicState:
        """The save/restore side (:class:`pyvmm.machine.gic_state.VgicState`), made on first use."""
        s = self.__dict__.get("_state")
        if s is None:
            from .gic_state import VgicState

            s = self._state = VgicState(self.device, self.ncpus, self.nr_irqs)
        return s

    # -- the state side's entry points (pyvmm/machine/gic_state.py has their documentation)
    def save(self, mpidrs: List[int]) -> Dict:
        """The whole vGIC state as a JSON-serialisable dict: :meth:`VgicState.save <pyvmm.machine.gic_state.VgicState.save>`."""
        return self.state.save(mpidrs)

    def restore(self, state: Dict, mpidrs: List[int]) -> None:
        """Load a :meth:`save` dict into this fresh vGIC: :meth:`VgicState.restore <pyvmm.machine.gic_state.VgicState.restore>`."""
        self.state.restore(state, mpidrs)

    def preset_config(self, state: Dict, mpidrs: List[int]) -> None:
        """:meth:`VgicState.preset_config <pyvmm.machine.gic_state.VgicState.preset_config>`."""
        self.state.preset_config(state, mpidrs)

    def learn_current(self, mpidrs: List[int]) -> None:
        """:meth:`VgicState.learn_current <pyvmm.machine.gic_state.VgicState.learn_current>`."""
        self.state.learn_current(mpidrs)


def spi_irq_line(spi: int) -> int:
    """The KVM_IRQ_LINE ``irq`` field for SPI ``spi`` (arm64: type in [27:24],
    vcpu index in [23:16], interrupt number in [15:0]; SPIs use the INTID)."""
    return (const("KVM_ARM_IRQ_TYPE_SPI") << const("KVM_ARM_IRQ_TYPE_SHIFT")) | (layout.SPI_BASE_INTID + spi)

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
the guest's ITS driver puts them, and KVM caches them.

Snapshot and migration (same document, "ITS Restore Sequence"): saving
flushes KVM's tables into guest RAM (KVM_DEV_ARM_ITS_SAVE_TABLES on the ITS,
KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES on the vGICv3: :meth:`VgicIts.flush`)
*before* guest RAM is written out (a migration: before its last dirty-log
look, so the pages KVM wrote are sent), then reads the registers
(:meth:`VgicIts.registers`). Restoring comes after guest RAM and the
redistributors (GICR_PROPBASER/PENDBASER/CTLR are in the vGIC state,
pyvmm/machine/gic.py) are in place: :func:`restore_sequence`.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Dict, List, Tuple

from .._ffi import const
from ..boot import fdt, layout
from ..errors import HostUnsupported, KvmError
from .gic_regs import GITS_BASER, GITS_BASERS, GITS_CBASER, GITS_CREADR, GITS_CTLR, GITS_CWRITER, GITS_IIDR

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

    def flush(self, gic_device) -> None:
        """Write KVM's ITS tables and the LPIs' pending bits (through
        ``gic_device``, the vGICv3's fd) into guest RAM. Every vCPU must be
        out of KVM_RUN (KVM answers EBUSY otherwise)."""
        ctrl = const("KVM_DEV_ARM_VGIC_GRP_CTRL")
        self.device.set_device_attr(ctrl, const("KVM_DEV_ARM_ITS_SAVE_TABLES"))
        gic_device.set_device_attr(ctrl, const("KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES"))

    def registers(self) -> Dict:
        """The ITS registers (:data:`STATE_KEYS`), as :func:`check_state` takes them."""
        get = self._get
        return {"GITS_CTLR": get(GITS_CTLR), "GITS_IIDR": get(GITS_IIDR), "GITS_CBASER": get(GITS_CBASER),
                "GITS_CREADR": get(GITS_CREADR), "GITS_CWRITER": get(GITS_CWRITER),
                "GITS_BASER": [get(GITS_BASER + 8 * n) for n in range(GITS_BASERS)]}

    def _get(self, offset: int) -> int:
        return self.device.get_device_attr(const("KVM_DEV_ARM_VGIC_GRP_ITS_REGS"), offset)

    def restore(self, state: Dict) -> None:
        """Load a checked :meth:`registers` dict and the tables in guest RAM
        (:func:`restore_sequence`); guest RAM and the redistributors first."""
        regs, ctrl = const("KVM_DEV_ARM_VGIC_GRP_ITS_REGS"), const("KVM_DEV_ARM_VGIC_GRP_CTRL")
        for group, attr, value in restore_sequence(state):
            if group == "regs":
                self.device.set_device_attr(regs, attr, value)
            else:
                self.device.set_device_attr(ctrl, attr)

    def close(self) -> None:
        self.device.close()


STATE_KEYS = ("GITS_CTLR", "GITS_IIDR", "GITS_CBASER", "GITS_CREADR", "GITS_CWRITER", "GITS_BASER")


def check_state(state, what: str = "snapshot machine.devices.pci.its") -> Dict:
    """The ITS registers of a saved state, every field checked (UsageProblem naming it)."""
    from ..devices.state import StateReader  # snapshot code loads it (start-up time)

    r = StateReader(what, state, STATE_KEYS)
    out: Dict = {k: r.uint(k, 32) for k in ("GITS_CTLR", "GITS_IIDR")}
    out.update({k: r.uint(k, 64) for k in ("GITS_CBASER", "GITS_CREADR", "GITS_CWRITER")})
    out["GITS_BASER"] = r.words("GITS_BASER", GITS_BASERS, 64)
    return out


def restore_sequence(state: Dict) -> List[Tuple[str, int, int]]:
    """The writes that restore checked ITS ``state``, in the order
    arm-vgic-its.rst prescribes, as (group, attr, value): "regs" a register
    at offset attr, "ctrl" a control command. GITS_IIDR first (its Revision
    selects the table ABI the BASERs' entry sizes and the tables follow),
    the BASERs, GITS_CBASER (writing it resets GITS_CREADR), GITS_CREADR
    (or the queued commands would run again), GITS_CWRITER, then the tables
    read from guest RAM (KVM_DEV_ARM_ITS_RESTORE_TABLES), GITS_CTLR last
    (it may enable the ITS)."""
    out = [("regs", GITS_IIDR, state["GITS_IIDR"])]
    out += [("regs", GITS_BASER + 8 * n, v) for n, v in enumerate(state["GITS_BASER"])]
    out += [("regs", GITS_CBASER, state["GITS_CBASER"]), ("regs", GITS_CREADR, state["GITS_CREADR"]),
            ("regs", GITS_CWRITER, state["GITS_CWRITER"]),
            ("ctrl", const("KVM_DEV_ARM_ITS_RESTORE_TABLES"), 0), ("regs", GITS_CTLR, state["GITS_CTLR"])]
    return out


def dt_node() -> fdt.Node:
    """The ITS as a child of the GIC node (arm,gic-v3.yaml: "msi-controller"
    subnodes, #msi-cells = 1: the device id)."""
    return (fdt.Node(f"msi-controller@{layout.ITS_BASE:x}")
            .prop("compatible", "arm,gic-v3-its")
            .prop("msi-controller")
            .prop("#msi-cells", 1)
            .prop("reg", fdt.reg64((layout.ITS_BASE, layout.ITS_SIZE)))
            .prop("phandle", PHANDLE_ITS))

"""Snapshot and restore of a bare-metal VM (:class:`pyvmm.machine.baremetal.BareMetal`),
with its configuration, its vCPU and its memory.

The machine configuration recorded (features, vector-length sets, ID
registers, CNTFRQ) is checked against the destination before anything is
started; what cannot be restored here is refused with the reason.
"""
from __future__ import annotations

from typing import Callable, Optional

from .. import hostinfo
from ..machine.baremetal import BareMetal
from ..errors import UsageProblem
from . import format as fmt
from . import vcpu_state
from .manifest import check_cntfrq, header, pack_ram, unpack_ram, vcpu_states

KIND = "baremetal"


def quiesce(vcpu) -> None:
    """Finish a pending MMIO/exit so the saved PC is past the instruction:
    KVM_RUN with immediate_exit completes it and returns EINTR at once."""
    vcpu.set_immediate_exit(True)
    try:
        vcpu.run()
    finally:
        vcpu.set_immediate_exit(False)


def take(bm: BareMetal, features, sme_bit: Optional[int] = None,
         progress: Optional[Callable[[int, int], None]] = None) -> fmt.Snapshot:
    quiesce(bm.vcpu)
    state = vcpu_state.save(bm.vcpu, features, sme_bit)
    blobs, regions = pack_ram(bm.mem, progress)
    blobs[f"vcpu{state.index}.regs"] = state.registers_blob()
    manifest = header(KIND)
    manifest.update({
        "machine": {"cntfrq": hostinfo.cntfrq(bm.kvm), "gic": None, "sme_bit": sme_bit,
                    "features": list(features), "memory": regions},
        "vcpus": [state.to_json()],
    })
    return fmt.Snapshot(manifest, blobs)


def restore(kvm, snap: fmt.Snapshot, clock: str = "hide") -> BareMetal:
    """A new BareMetal VM in the snapshot's state, ready to :meth:`run`."""
    if snap.manifest.get("kind") != KIND:
        raise UsageProblem(f"snapshot kind {snap.manifest.get('kind')!r} is not {KIND!r}")
    from . import schema

    schema.check(snap)
    machine = snap.manifest["machine"]
    states = vcpu_states(snap)
    regions = machine["memory"]
    if len(regions) != 1 or len(states) != 1:
        raise UsageProblem("bare-metal snapshots hold one RAM region and one vCPU")
    region = regions[0]
    bad = snap.verify_ram()  # a bare-metal VM's RAM is small: checked before it runs
    if bad:
        raise fmt.SnapshotError(f"snapshot {bad}", "use an intact copy or take the snapshot again")
    bm = BareMetal(kvm, ram_size=int(region["size"]))
    try:
        if bm.mem.regions[0].gpa != int(region["gpa"]):
            raise UsageProblem(f"snapshot RAM at {int(region['gpa']):#x} is not where this runner puts it")
        host_cntfrq = check_cntfrq(int(machine["cntfrq"]), kvm)
        vcpu_state.restore(bm.vcpu, states[0], clock=clock, cntfrq=host_cntfrq,
                           sme_bit=machine.get("sme_bit"))
        unpack_ram(snap, region, bm.mem)
        return bm
    except BaseException:
        bm.close()
        raise

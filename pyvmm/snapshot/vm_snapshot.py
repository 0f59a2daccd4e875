"""Snapshot and restore of a bare-metal VM (:class:`pyvmm.baremetal.BareMetal`):
machine configuration, every vCPU, guest memory.

The machine configuration recorded (features, vector-length sets, ID
registers, CNTFRQ) is checked against the destination before anything is
started; what cannot be restored here is refused with the reason.
"""
from __future__ import annotations

import platform
import time
from typing import Callable, Optional

from .. import __version__, hostinfo
from ..baremetal import BareMetal
from ..errors import UsageProblem
from . import format as fmt
from . import memory_image, vcpu_state

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
    blobs = {f"vcpu{state.index}.regs": state.registers_blob()}
    regions = []
    for r in bm.mem.regions:
        blob, stored = memory_image.pack(r.mm, progress)
        name = f"ram{r.slot}"
        blobs[name] = blob
        regions.append({"slot": r.slot, "gpa": r.gpa, "size": r.size, "blob": name, "stored_pages": stored})
    manifest = header(KIND)
    manifest.update({
        "machine": {"cntfrq": hostinfo.cntfrq(bm.kvm), "gic": None, "sme_bit": sme_bit,
                    "features": list(features), "memory": regions},
        "vcpus": [state.to_json()],
    })
    return fmt.Snapshot(manifest, blobs)


def check_cntfrq(saved: int, kvm=None) -> int:
    """This host's CNTFRQ_EL0, refusing a snapshot taken at another frequency
    (the guest's counters and timer deadlines would run at a different pace)."""
    host = hostinfo.cntfrq(kvm)
    if host != saved:
        raise UsageProblem(f"CNTFRQ differs: snapshot {saved} Hz, this host {host} Hz",
                           "restore on a host whose timer runs at the same frequency")
    return host


def header(kind: str) -> dict:
    """The manifest keys every snapshot kind starts with."""
    return {"kind": kind, "created_by": f"pyvmm {__version__}", "created_at_ns": time.time_ns(),
            "host": {"machine": platform.machine(), "kernel": platform.release()}}


def vcpu_states(snap: fmt.Snapshot):
    out = []
    for meta in snap.manifest.get("vcpus", []):
        try:
            out.append(vcpu_state.VcpuState.from_json(meta, snap.blobs[f"vcpu{meta['index']}.regs"]))
        except (KeyError, ValueError) as e:
            raise fmt.SnapshotError(f"snapshot vCPU state is invalid ({e})") from None
    return out


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
    bm = BareMetal(kvm, ram_size=int(region["size"]))
    try:
        if bm.mem.regions[0].gpa != int(region["gpa"]):
            raise UsageProblem(f"snapshot RAM at {int(region['gpa']):#x} is not where this runner puts it")
        host_cntfrq = check_cntfrq(int(machine["cntfrq"]), kvm)
        vcpu_state.restore(bm.vcpu, states[0], clock=clock, cntfrq=host_cntfrq,
                           sme_bit=machine.get("sme_bit"))
        mem = bm.mem
        base = mem.regions[0].gpa
        try:
            memory_image.unpack_into(snap.blobs[region["blob"]], int(region["size"]),
                                     lambda off, page: mem.write(base + off, page))
        except (KeyError, ValueError) as e:
            raise fmt.SnapshotError(f"snapshot memory is invalid ({e})") from None
        return bm
    except BaseException:
        bm.close()
        raise

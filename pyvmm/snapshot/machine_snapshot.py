"""Snapshot and restore of a whole :class:`pyvmm.machine.Machine` (what
``pyvmm run`` boots): machine configuration, every vCPU, the vGICv3, the
devices (PL011, virtio-mmio transports with their queues and backends) and
guest memory.

Saving needs the machine paused (:meth:`Machine.pause`): every vCPU thread
is parked outside KVM_RUN with its pending MMIO access completed, and the
coalesced-MMIO ring is drained, so device models and registers agree.

Restore checks everything it can before creating a VM (kind, CNTFRQ, GIC
model, SME availability, disk files), then builds the machine in this order:
VM and RAM -> each vCPU created and initialised (features, vector lengths,
MPIDR) -> vGIC created and initialised -> vGIC state -> each vCPU's registers
through the SME restore planner (ID registers, FINALIZE, SVCR first, ...,
the timers with the rest) -> devices and their state -> guest memory.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Dict, Optional

from .. import hostinfo
from ..boot import layout
from ..devices.state import StateReader
from ..errors import HostUnsupported, UsageProblem
from ..machine import DiskSpec, Machine, MachineConfig, check_options, devspec
from ..vcpu import mpidr_of
from . import format as fmt
from . import vcpu_state
from .manifest import check_cntfrq, header, pack_ram, unpack_ram, vcpu_states

KIND = "machine"
GIC_MODEL = "gicv3"
Progress = Optional[Callable[[int, int], None]]

# MachineConfig fields stored in the manifest (the rest are host-side choices).
_CONFIG_KEYS = ("kernel", "initrd", "firmware", "cmdline", "mem", "cpus", "sve_max_vl", "sme_max_vl",
                "sve", "console", "on_reboot")


def config_to_json(c: MachineConfig) -> Dict:
    d = {k: getattr(c, k) for k in _CONFIG_KEYS}
    d["disks"] = [{"path": os.path.abspath(x.path), "readonly": x.readonly} for x in c.disks]
    d["rng"] = c.rng
    d["nets"] = [{"tap": n.tap, "mac": n.mac, "vhost": n.vhost} for n in c.nets]
    d["vsock"] = None if c.vsock is None else {"cid": c.vsock.cid}
    return d


def config_from_json(d: Dict, kvm_path: str = "/dev/kvm") -> MachineConfig:
    """The machine configuration of a manifest, read with the one StateReader
    strictness (docs/snapshot-format.md): every field there with its type."""
    try:
        r = StateReader("machine configuration", d, _CONFIG_KEYS + ("disks",), optional=("rng", "nets", "vsock"))
        disks = [r.nested("disks", ("path", "readonly"), index=i) for i in range(len(r.list("disks")))]
        # snapshots from before virtio-rng, virtio-net and virtio-vsock have none of them
        rng = r.bool("rng") if r.has("rng") else False
        nets = []
        for i in range(len(r.list("nets")) if r.has("nets") else 0):
            n = r.nested("nets", ("tap", "mac", "vhost"), index=i)
            # through the --net parser, so a snapshot's values get the option's checks
            nets.append(devspec.parse_net(f"tap={n.str('tap')},mac={n.str('mac')},"
                                          f"vhost={'on' if n.bool('vhost') else 'off'}"))
        vsock = None
        if r.has("vsock") and d["vsock"] is not None:
            vsock = devspec.parse_vsock(f"cid={r.nested('vsock', ('cid',)).uint('cid', 32)}")
        return MachineConfig(
            **{k: r.str(k, optional=True) for k in ("kernel", "initrd", "firmware", "cmdline")},
            mem=r.int("mem", 0, (1 << 64) - 1), cpus=r.int("cpus", 0, 1 << 16),
            sve_max_vl=r.int_or_none("sve_max_vl", 0, 1 << 16), sme_max_vl=r.int_or_none("sme_max_vl", 0, 1 << 16),
            sve=r.bool("sve"), console=r.str("console"), on_reboot=r.str("on_reboot"),
            disks=[DiskSpec(x.str("path"), x.bool("readonly")) for x in disks], kvm_path=kvm_path,
            rng=rng, nets=nets, vsock=vsock)
    except UsageProblem as e:
        raise fmt.SnapshotError(f"snapshot machine configuration is invalid ({e.message})") from None


@contextlib.contextmanager
def _planes_stopped(m: Machine):
    """Devices whose queues a vhost plane serves are stopped while the
    machine is saved (their rings' next available indices read back into
    the transports' queues; guest RAM no longer changes under the save) and
    started again afterwards."""
    stopped = []
    try:
        for t in m.virtio:
            if t.backend.kernel_queues and t.backend.running:
                t.backend.pause(t)
                stopped.append(t)
        yield
    finally:
        for t in stopped:
            t.backend.unpause(t)


def check_snapshottable(m: Machine) -> None:
    """UsageProblem naming the first device whose state pyvmm cannot save."""
    for t in m.virtio:
        why = t.backend.snapshot_refusal
        if why:
            raise UsageProblem(f"cannot snapshot this machine: {why}")


def take(m: Machine, progress: Progress = None) -> fmt.Snapshot:
    """The snapshot of a paused machine."""
    if not m.paused:
        raise UsageProblem("the machine must be paused before it is saved")
    check_snapshottable(m)
    with m.io_lock, _planes_stopped(m):
        states = [vcpu_state.save(v, feats, m.sme_bit) for v, feats in zip(m.vcpus, m.vcpu_features)]
        gic = m.gic.save([mpidr_of(v) for v in m.vcpus])
        devices = {"uart": m.uart.save_state(),
                   "virtio": [{"base": t.base, "device_id": t.backend.device_id, "state": t.save_state()}
                              for t in m.virtio]}
        blobs, regions = pack_ram(m.mem, progress)
        blobs.update({f"vcpu{s.index}.regs": s.registers_blob() for s in states})
    manifest = header(KIND)
    manifest.update({
        "machine": {"cntfrq": hostinfo.cntfrq(), "gic": {"model": GIC_MODEL, "state": gic},
                    "sme_bit": m.sme_bit, "config": config_to_json(m.config), "memory": regions,
                    "devices": devices},
        "vcpus": [s.to_json() for s in states],
    })
    return fmt.Snapshot(manifest, blobs)


def check(kvm, snap: fmt.Snapshot) -> MachineConfig:
    """Refuse, with the reason, what this host cannot restore; nothing is
    created. Returns the machine configuration."""
    man = snap.manifest
    if man.get("kind") != KIND:
        hint = "restore bare-metal snapshots with the library (pyvmm.snapshot.vm_snapshot)" \
            if man.get("kind") == "baremetal" else None
        raise UsageProblem(f"snapshot kind {man.get('kind')!r} is not a pyvmm run machine", hint)
    try:
        machine = man["machine"]
        gic_model = machine["gic"]["model"]
        cntfrq = int(machine["cntfrq"])
        config = config_from_json(machine["config"], kvm.path)
        regions = machine["memory"]
        machine["devices"]["uart"]
    except (KeyError, TypeError, ValueError) as e:
        raise fmt.SnapshotError(f"snapshot manifest is missing machine state ({e})") from None
    try:
        check_options(config)  # the checks pyvmm run makes on its options
    except UsageProblem as e:
        raise fmt.SnapshotError(f"snapshot machine configuration is invalid ({e.message})") from None
    if gic_model != GIC_MODEL:
        raise UsageProblem(f"snapshot interrupt controller {gic_model!r} is not the {GIC_MODEL} pyvmm creates")
    check_cntfrq(cntfrq)
    if len(man.get("vcpus", [])) != config.cpus:
        raise fmt.SnapshotError(f"snapshot holds {len(man.get('vcpus', []))} vCPUs for a {config.cpus}-vCPU machine")
    if len(regions) != 1 or int(regions[0]["size"]) != config.mem:
        raise fmt.SnapshotError("snapshot RAM does not match its machine configuration")
    sme_bit = machine.get("sme_bit")
    if sme_bit is not None:
        from ..sme import discover

        found = discover(kvm)
        if found.bit != sme_bit:
            raise HostUnsupported("the snapshot's vCPUs have SME, and this host's KVM offers none"
                                  if not found.present else
                                  f"the snapshot used SME feature bit {sme_bit}, this host's KVM uses {found.bit}",
                                  "restore on a host running a kernel with the KVM SME interface")
    for d in config.disks:
        if not os.path.isfile(d.path):
            raise UsageProblem(f"the snapshot's disk {d.path} does not exist",
                               "restore where the disk images are at the same paths")
    return config


def restore_into(m: Machine, snap: fmt.Snapshot, clock: str = "hide",
                 progress: Progress = None) -> None:
    """Build ``m`` (a new :class:`Machine` for the snapshot's configuration)
    in the snapshot's state, ready to run. ``clock``: see
    :func:`pyvmm.snapshot.vcpu_state.restore`."""
    machine = snap.manifest["machine"]
    states = vcpu_states(snap)
    m.create_vm()
    region = machine["memory"][0]
    if m.mem.regions[0].gpa != int(region["gpa"]):
        raise fmt.SnapshotError(f"snapshot RAM at {int(region['gpa']):#x} is not where pyvmm puts it")
    m.sme_bit = machine.get("sme_bit")
    vcpu_state.check_clock(clock)  # before any vCPU exists
    states = sorted(states, key=lambda s: s.index)
    for st in states:
        v = m.vm.create_vcpu(st.index)
        vcpu_state.init(v, st)  # features, vector lengths, MPIDR
        m.add_vcpu(v, st.features)
    # The vGIC before the vCPU registers: writing a timer register makes KVM
    # compute the timer's interrupt line and raise it in the vGIC; before the
    # vGIC exists that is lost, and the timer line stays dead (the guest
    # never gets another tick). The timers' own PPI levels therefore come from
    # the timer registers, written last, not from the saved vGIC line levels.
    m.create_devices()
    m.gic.restore(_without_timer_levels(machine["gic"]["state"]), [mpidr_of(v) for v in m.vcpus])
    cntfrq = hostinfo.cntfrq()  # this host's (check() refuses a snapshot taken at another)
    for v, st in zip(m.vcpus, states):
        vcpu_state.write(v, st, clock=clock, cntfrq=cntfrq, sme_bit=m.sme_bit)
    devices = machine["devices"]
    m.uart.load_state(devices["uart"])
    saved_virtio = devices.get("virtio", [])
    if len(saved_virtio) != len(m.virtio):
        raise fmt.SnapshotError(f"snapshot has {len(saved_virtio)} virtio devices, its configuration "
                                f"makes {len(m.virtio)}")
    for i, (t, saved) in enumerate(zip(m.virtio, saved_virtio)):
        r = StateReader(f"virtio[{i}]", saved, ("base", "device_id", "state"))
        base = r.uint("base", 64)
        if base != t.base or r.uint("device_id", 32) != t.backend.device_id:
            raise fmt.SnapshotError(f"snapshot virtio device at {base:#x} does not match "
                                    f"the machine's at {t.base:#x}")
        t.load_state(r.dict("state"))
    unpack_ram(snap, region, m.mem, progress)
    # A queue notify is an eventfd signal served by the I/O thread: one the
    # guest made just before the snapshot may not have been served yet. A
    # vhost plane is set up again from the restored queues (it reads the
    # used indices from guest RAM, so after the memory).
    for t in m.virtio:
        t.after_restore()


# The architected timers' PPIs (INTID = 16 + PPI number) as bits of the
# redistributor's PPI line-level word.
TIMER_PPI_BITS = sum(1 << (16 + ppi) for ppi in (layout.TIMER_PPI_SEC, layout.TIMER_PPI_PHYS,
                                                 layout.TIMER_PPI_VIRT, layout.TIMER_PPI_HYP))


def _without_timer_levels(state: Dict) -> Dict:
    """The saved vGIC state with the timer PPIs' line levels low. KVM's timer
    code owns those lines: it raises or lowers them only when the timer's
    condition changes from what it last signalled, which for a fresh vCPU
    is "low". A saved "high" written into the vGIC would stay high for ever
    once the restored timer is not firing: the guest would take the timer
    interrupt again after every EOI (a CPU livelocked in its timer handler).
    The vCPU's timer registers, written after the vGIC, raise the line when
    the timer really fires."""
    try:
        redist = [dict(r, LINE_LEVEL=int(r["LINE_LEVEL"]) & ~TIMER_PPI_BITS) for r in state["redist"]]
    except (KeyError, TypeError, ValueError):
        return state  # malformed: VgicV3.restore refuses it with the reason
    return dict(state, redist=redist)


def saved_at(snap: fmt.Snapshot) -> float:
    """Seconds since the snapshot was taken (by this host's clock)."""
    return max(0.0, (time.time_ns() - int(snap.manifest.get("created_at_ns", 0))) / 1e9)

"""Snapshot and restore of a whole :class:`pyvmm.machine.Machine` (what
``pyvmm run`` boots): machine configuration, every vCPU, the vGICv3, the
devices (PL011, virtio-mmio transports with their queues and backends, the
PCI side: the ITS and the virtio-pci functions) and guest memory.

Saving needs the machine paused (:meth:`Machine.pause`): every vCPU thread
is parked outside KVM_RUN with its pending MMIO access completed, and the
coalesced-MMIO ring is drained, so device models and registers agree.

Restore checks everything it can before creating a VM (kind, CNTFRQ, GIC
model, SME availability, disk files), then builds the machine in this order:
VM and RAM -> each vCPU created and initialised (features, vector lengths,
MPIDR) -> vGIC created and initialised -> vGIC state -> each vCPU's registers
through the SME restore planner (ID registers, FINALIZE, SVCR first, ...,
the timers with the rest) -> devices and their state -> guest memory -> the
ITS (its registers, and its tables read from guest RAM) -> the devices'
after-restore step.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from .._record import record
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from .. import _threads, hostinfo
from ..boot import layout
from ..errors import HostUnsupported, UsageProblem
from ..machine import ExitStatus, Machine, MachineConfig, check_disks, devspec
from ..machine.machine import built
from ..vcpu import mpidr_of
from . import format as fmt
from . import chain, schema, trust, vcpu_state, vhost_log
from .manifest import check_cntfrq, empty_ram, header, pack_ram, unpack_ram, vcpu_states

KIND = "machine"
GIC_MODEL = "gicv3"
Progress = Optional[Callable[[int, int], None]]

# MachineConfig fields stored in the manifest (the rest are host-side
# choices); schema.CONFIG_KEYS_SINCE were added later (absent: SME only with
# sme_max_vl, no PMU, no pointer auth).
_CONFIG_KEYS = tuple(k for k in schema.CONFIG_KEYS if k != "disks") + schema.CONFIG_KEYS_SINCE


def config_to_json(c: MachineConfig) -> Dict:
    d = {k: getattr(c, k) for k in _CONFIG_KEYS}
    d["disks"] = [{"path": os.path.abspath(x.path), "readonly": x.readonly} for x in c.disks]
    d["rng"] = c.rng
    # "transport" only for virtio-pci (a pyvmm from before it refuses such a snapshot; mmio ones stay readable)
    d["nets"] = [{"tap": n.tap, "mac": n.mac, "vhost": n.vhost, **({"transport": n.transport}
                                                                  if n.transport != "mmio" else {})}
                 for n in c.nets]
    d["vsock"] = None if c.vsock is None else {"cid": c.vsock.cid}
    return d


def config_from_json(d: Dict, kvm_path: str = "/dev/kvm") -> MachineConfig:
    """The configuration a snapshot records, checked (pyvmm/snapshot/schema.py)."""
    config = schema.config_from_manifest(d)
    config.kvm_path = kvm_path
    return config


@contextlib.contextmanager
def _planes_stopped(m: Machine) -> Iterator[None]:
    """Devices whose queues a vhost plane serves are stopped while the
    machine is saved (their rings' next available indices read back into
    the transports' queues; guest RAM no longer changes under the save) and
    started again afterwards."""
    held = vhost_log.stop_planes(m)  # not those a migration holds stopped already
    try:
        yield
    finally:
        vhost_log.restart_planes(held)


def check_snapshottable(m: Machine) -> None:
    """UsageProblem naming the first device whose state pyvmm cannot save."""
    for t in m.transports:
        why = t.backend.snapshot_refusal
        if why:
            raise UsageProblem(f"cannot snapshot this machine: {why}")


def take(m: Machine, progress: Progress = None, memory: bool = True,
         cache: Optional[vcpu_state.SaveCache] = None, sealed: bool = True,
         timing: Optional[Dict[str, float]] = None, flushed: bool = False) -> fmt.Snapshot:
    """The snapshot of a paused machine. Its guest RAM is the machine's own
    memory (:class:`~pyvmm.snapshot.ram_image.LiveRam`), read when the
    snapshot is written: until then the machine must stay paused and its
    devices quiet (:func:`save_live` writes it under the same hold). Without
    ``memory``, each RAM region is stored as all zero (the machine's state
    alone: live migration sends the memory itself, pyvmm/migration/).
    ``cache``: see :func:`pyvmm.snapshot.vcpu_state.save`. Without
    ``sealed``, the snapshot carries no seal (a live migration's final state:
    the destination trusts only the state it checked first, and refuses a
    final one whose configuration differs). ``timing``: filled with the
    milliseconds the vCPUs, the vGIC, the devices and the manifest took.
    ``flushed``: the caller ran :func:`flush_its` in this pause already
    (a migration, before its last dirty-log look)."""
    with quiet(m):
        return _take(m, progress, memory, cache, sealed, timing, flushed)


def flush_its(m: Machine) -> None:
    """A machine with PCI devices: KVM's ITS tables and LPI pending bits
    written into guest RAM (arm-vgic-its.rst, KVM_DEV_ARM_ITS_SAVE_TABLES),
    before guest RAM is saved. The vCPUs must be paused."""
    if m.pci is not None:
        m.pci.flush(built(m.gic, "vGIC").device)


@contextlib.contextmanager
def quiet(m: Machine):
    """Nothing but the caller changes the paused machine ``m``: the I/O
    thread held off (io_lock), the vhost planes stopped."""
    if not m.paused:
        raise UsageProblem("the machine must be paused before it is saved")
    with m.io_lock, _planes_stopped(m):
        yield


def _take(m: Machine, progress: Progress = None, memory: bool = True,
          cache: Optional[vcpu_state.SaveCache] = None, sealed: bool = True,
          timing: Optional[Dict[str, float]] = None, flushed: bool = False) -> fmt.Snapshot:
    t0 = time.monotonic()
    saved = _save_vcpus(m, cache)
    states = [s for s, _ in saved]
    t1 = time.monotonic()
    # After every vCPU read has ended: KVM answers a vGIC access made while
    # another ioctl holds a vCPU with EBUSY.
    gic = built(m.gic, "vGIC").save([mpidr_of(v) for v in m.vcpus])
    t2 = time.monotonic()
    devices = {"uart": built(m.uart, "UART").save_state(),
               "virtio": [{"base": t.base, "device_id": t.backend.device_id, "state": t.save_state()}
                          for t in m.virtio]}
    if m.pci is not None:
        if not flushed:
            flush_its(m)
        devices["pci"] = m.pci.save_state()
    t3 = time.monotonic()
    blobs, regions = pack_ram(m.mem, progress) if memory else empty_ram(m.mem)
    blobs.update({f"vcpu{s.index}.regs": blob for s, blob in saved})
    manifest = header(KIND)
    manifest.update({
        "machine": {"cntfrq": hostinfo.cntfrq(m.kvm), "gic": {"model": GIC_MODEL, "state": gic},
                    "sme_bit": m.sme_bit, "config": config_to_json(m.config), "memory": regions,
                    "devices": devices},
        "vcpus": [s.to_json() for s in states],
    })
    # Sealed with this user's key: restore then trusts the host resources it names.
    snap = fmt.Snapshot(manifest, blobs, seal=trust.sealer() if sealed else None)
    if timing is not None:
        timing.update(vcpus=_ms(t0, t1), vgic=_ms(t1, t2), devices=_ms(t2, t3), manifest=_ms(t3, time.monotonic()))
    return snap


def _save_vcpus(m: Machine, cache: Optional[vcpu_state.SaveCache]) -> List[Tuple[vcpu_state.VcpuState, bytes]]:
    """Each vCPU's state and register blob, the vCPUs read in parallel (a
    thread for each one after the first, joined before this returns: their
    ioctls run without the interpreter lock)."""
    pairs = list(zip(m.vcpus, m.vcpu_features))
    if len(pairs) < 2:
        return [vcpu_state.save_with_blob(v, feats, m.sme_bit, cache) for v, feats in pairs]
    out: List[Any] = [None] * len(pairs)

    def one(k: int) -> None:
        try:
            out[k] = vcpu_state.save_with_blob(pairs[k][0], pairs[k][1], m.sme_bit, cache)
        except BaseException as e:  # noqa: BLE001 (raised below, in the caller's thread)
            out[k] = e
    threads = [_threads.start_daemon(one, (k,), f"pyvmm-save-vcpu{k}") for k in range(1, len(pairs))]
    try:
        one(0)
    finally:
        for t in threads:
            t.join()
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return out


@record
class SaveReport:
    """What :func:`save_live` did: the file, its size, the memory pages
    stored, the seconds the guest was paused (of them, taking the state and
    writing the file) and the state the machine was left in."""
    path: str
    bytes: int
    stored_pages: int
    paused_seconds: float
    save_seconds: float
    write_seconds: float
    state: str  # "running", "paused" or "stopped"
    parent: Optional[str] = None  # an incremental snapshot: its parent's file name


def save_live(m: Machine, path: str, progress: Optional[Callable[[int, int, str], None]] = None,
              stop: bool = False, since: Optional[str] = None) -> SaveReport:
    """Snapshot a machine that may be running to ``path`` (atomically, mode
    0600): pause it if it runs, take its state, write the file, then resume it.
    A machine paused before stays paused; with ``stop`` it is ended instead
    (:attr:`ExitStatus.POWEROFF`), but only once the file is complete: a
    failed snapshot leaves the guest as it was. ``progress(done, total,
    what)`` hears about "memory" (taking) and "file" (writing).

    The machine's memory is tracked from its first snapshot on (KVM's dirty
    log, pyvmm/snapshot/chain.py): with ``since``, the path of the last
    snapshot this machine wrote, only the memory chunks written since then
    are stored, and the file names that one as its parent (format version
    3); any other ``since`` is refused before the guest is paused."""
    check_snapshottable(m)  # before the guest is paused for nothing
    link = None
    if since is not None:
        link = chain.link_to(since, path)
        chain.check_base(m, link, since)
    was_paused = m.paused
    t0 = time.monotonic()
    if not was_paused:
        m.pause()
    ok = False
    try:
        def report(what: str) -> Progress:
            return None if progress is None else (lambda done, total: progress(done, total, what))

        # guest RAM is written from the machine's memory: devices stay quiet until then
        with quiet(m):
            snap = _take(m, report("memory"))
            chain.prepare(m, snap, link, track=not stop)
            t_saved = time.monotonic()
            size = fmt.save(path, snap, report("file"))
            chain.committed(m, snap, path)
        ok = True
    finally:
        if stop and ok:
            m.finish(ExitStatus.POWEROFF, "stopped after a snapshot")
        elif not was_paused:
            m.resume()
    t1 = time.monotonic()
    stored = sum(r["stored_pages"] for r in snap.manifest["machine"]["memory"])
    return SaveReport(path, size, stored, round(t1 - t0, 3), round(t_saved - t0, 3), round(t1 - t_saved, 3),
                      "stopped" if stop else ("paused" if was_paused else "running"), link.name if link else None)


def check(kvm, snap: fmt.Snapshot, given: Optional[trust.HostChoice] = None) -> MachineConfig:
    """Refuse, with the reason, what this host cannot restore; nothing is
    created. Returns the machine configuration, its host resources (disks,
    reboot payload) chosen by :func:`pyvmm.snapshot.trust.choose_resources`
    from ``given`` (the command line) or a snapshot sealed by this user."""
    man = snap.manifest
    if man.get("kind") != KIND:
        hint = "restore bare-metal snapshots with the library (pyvmm.snapshot.vm_snapshot)" \
            if man.get("kind") == "baremetal" else None
        raise UsageProblem(f"snapshot kind {man.get('kind')!r} is not a pyvmm run machine", hint)
    schema.check(snap)  # every field, and the machine configuration through run's own checks
    machine = man["machine"]
    config = schema.config_from_manifest(machine["config"])
    config.kvm_path = kvm.path
    if machine["gic"]["model"] != GIC_MODEL:
        raise UsageProblem(f"snapshot interrupt controller {machine['gic']['model']!r} is not the "
                           f"{GIC_MODEL} pyvmm creates")
    check_cntfrq(machine["cntfrq"], kvm)
    if config.sve_max_vl is not None or config.sme_max_vl is not None:
        # what pyvmm run would refuse on this host (a length of an extension it lacks)
        from .. import guest_features

        guest_features.choose(config, guest_features.offered(kvm))
    check_features(kvm, man.get("vcpus", []))
    sme_bit = machine.get("sme_bit")
    if sme_bit is not None:
        from ..sme import discover

        found = discover(kvm)
        if found.bit != sme_bit:
            raise HostUnsupported("the snapshot's vCPUs have SME, and this host's KVM offers none"
                                  if not found.present else
                                  f"the snapshot used SME feature bit {sme_bit}, this host's KVM uses {found.bit}",
                                  "restore on a host running a kernel with the KVM SME interface")
    # Host resources: the user's or a sealed snapshot's, never the file's alone.
    config = trust.choose_resources(config, snap, given)
    check_disks(config.disks)
    return config


_OPTIONAL_FEATURES = (("KVM_ARM_VCPU_PMU_V3", "KVM_CAP_ARM_PMU_V3", "a PMU"),
                      ("KVM_ARM_VCPU_PTRAUTH_ADDRESS", "KVM_CAP_ARM_PTRAUTH_ADDRESS", "pointer authentication"),
                      ("KVM_ARM_VCPU_PTRAUTH_GENERIC", "KVM_CAP_ARM_PTRAUTH_GENERIC", "pointer authentication"))


def check_features(kvm, vcpus) -> None:
    """Refuse a snapshot whose vCPUs have a PMU or pointer authentication
    this host's KVM cannot give (rather than a failed KVM_ARM_VCPU_INIT)."""
    from .._ffi import const

    features: Set[int] = set()
    for v in vcpus:
        if isinstance(v, dict) and isinstance(v.get("features"), list):
            features.update(f for f in v["features"] if type(f) is int)
    for bit, cap, what in _OPTIONAL_FEATURES:
        if const(bit) in features and kvm.check_extension(const(cap)) <= 0:
            raise HostUnsupported(f"the snapshot's vCPUs have {what}, and this host's KVM offers none",
                                  "restore on a host that offers it (see pyvmm caps)")


def restore_into(m: Machine, snap: fmt.Snapshot, clock: str = "hide",
                 progress: Progress = None) -> str:
    """Build ``m`` (a new :class:`Machine` for the snapshot's configuration)
    in the snapshot's state, ready to run. ``clock``: see
    :func:`pyvmm.snapshot.vcpu_state.restore`. Returns how guest memory was
    loaded: "mapped" from the file, or "read: " and why it was not mapped.
    Version-2 RAM whose CRC-32s were not checked yet is checked by a thread
    while the guest runs (:class:`RamVerifier`, closed with the machine)."""
    region = build_from(m, snap, clock)
    how = unpack_ram(snap, region, m.mem, progress)
    if snap.ram_images() and not snap.ram_checked:
        m.owned.append(RamVerifier(m, snap))
    finish_restore(m)
    return how


def finish_restore(m: Machine) -> None:
    """The last step of a restore, once guest memory is in place."""
    # A queue notify is an eventfd signal served by the I/O thread: one the
    # guest made just before the snapshot may not have been served yet. A
    # vhost plane is set up again from the restored queues (it reads the
    # used indices from guest RAM, so after the memory). The ITS reads its
    # tables and the LPI pending bits from guest RAM, after the vGIC's
    # redistributors (arm-vgic-its.rst, "ITS Restore Sequence"), and before
    # the virtio-pci functions signal the messages they owe.
    if m.pci is not None:
        m.pci.restore_its()
    for t in m.transports:
        t.after_restore()


def _load_devices(m: Machine, devices: Dict) -> None:
    built(m.uart, "UART").load_state(devices["uart"])
    saved_virtio = devices.get("virtio", [])
    if len(saved_virtio) != len(m.virtio):
        raise fmt.SnapshotError(f"snapshot has {len(saved_virtio)} virtio devices, its configuration "
                                f"makes {len(m.virtio)}")
    for i, (t, saved) in enumerate(zip(m.virtio, saved_virtio)):
        check_virtio_slot(i, saved, t.base, t.backend.device_id)
        t.load_state(saved["state"])
    if (m.pci is not None) != ("pci" in devices):
        raise fmt.SnapshotError("snapshot has PCI devices and its configuration makes none" if m.pci is None
                                else "snapshot has no PCI state, and its configuration makes PCI devices")
    if m.pci is not None:
        m.pci.load_state(devices["pci"])  # the ITS itself once guest RAM is in place (finish_restore)


def build_from(m: Machine, snap: fmt.Snapshot, clock: str = "hide", vm_created: bool = False) -> Dict:
    """Everything of :func:`restore_into` but guest memory and the devices'
    after-restore step: VM (unless ``vm_created``: live migration fills
    guest RAM before the state comes), vCPUs (ID registers and vector
    lengths included, so what this host's KVM refuses is refused here),
    vGIC and device state. Returns the snapshot's RAM region entry."""
    vcpu_state.check_clock(clock)  # before any vCPU exists
    states = _sorted_states(snap)
    # A snapshot restore writes the ID registers after the vGIC state, as it always did.
    plans = build_fixed(m, snap, vm_created, states, write_fixed=False)
    return load_state(m, snap, clock, plans, states, write_fixed=True)


def _sorted_states(snap: fmt.Snapshot, plans: Optional[List[vcpu_state.WritePlan]] = None
                   ) -> List[vcpu_state.VcpuState]:
    layouts = {p.index: p.layout for p in plans} if plans else None
    return sorted(vcpu_states(snap, layouts), key=lambda s: s.index)


def build_fixed(m: Machine, snap: fmt.Snapshot, vm_created: bool = False,
                states: Optional[List[vcpu_state.VcpuState]] = None,
                write_fixed: bool = True) -> List[vcpu_state.WritePlan]:
    """The first half of :func:`build_from`, what does not change while the
    guest runs: VM (unless ``vm_created``), each vCPU created and
    initialised (features, vector lengths, MPIDR), the vGIC and the devices
    created, each vCPU's ID registers written and its vector lengths
    finalised (unless not ``write_fixed``: :func:`load_state` then writes
    them after the vGIC state). Returns each vCPU's write plan for
    :func:`load_state`."""
    machine = snap.manifest["machine"]
    states = _sorted_states(snap) if states is None else states
    if not vm_created:
        m.create_vm()
    region = machine["memory"][0]
    if m.mem.regions[0].gpa != int(region["gpa"]):
        raise fmt.SnapshotError(f"snapshot RAM at {int(region['gpa']):#x} is not where pyvmm puts it")
    m.sme_bit = machine.get("sme_bit")
    from .._ffi import const

    m.pmu = any(const("KVM_ARM_VCPU_PMU_V3") in st.features for st in states)  # create_devices inits it
    m.virtio_trigger = schema.virtio_trigger(machine["devices"])  # create_devices wires the interrupts for it
    for st in states:
        v = built(m.vm, "VM").create_vcpu(st.index)
        vcpu_state.init(v, st)  # features, vector lengths, MPIDR
        m.add_vcpu(v, st.features)
    m.create_devices()
    plans = []
    for v, st in zip(m.vcpus, states):
        plan = vcpu_state.WritePlan(v, st, m.sme_bit)
        if write_fixed:
            plan.write_fixed(v, st)  # ID registers, FINALIZE
        plans.append(plan)
    return plans


def prepare_load(m: Machine, snap: fmt.Snapshot, plans: List[vcpu_state.WritePlan]) -> None:
    """On a machine :func:`build_fixed` built from ``snap`` (``plans``, its
    result): the check that this host runs it, and what makes
    :func:`load_state` of a later state of the same machine shorter (a live
    migration's destination, while memory is copied). ``snap``'s state is
    loaded into the machine (vGIC, vCPU registers, events without a pending
    SError or abort made pending, MP state, devices): KVM refuses here what
    it would refuse at the end. Then the vCPUs' timers are disabled (their
    lines low, as on fresh vCPUs, which :func:`load_state` assumes: see
    :func:`_without_timer_levels`), every vGIC register is read
    (:meth:`pyvmm.machine.gic.VgicV3.learn_current`) and so are the present
    values of each vCPU's registers, its blob layout made
    (:meth:`pyvmm.snapshot.vcpu_state.WritePlan.read_current`): the vCPUs
    must not run before :func:`load_state`, which then writes only the
    registers whose value differs."""
    load_state(m, snap, "hide", plans, inject=False)
    for v, plan in zip(m.vcpus, plans):
        plan.timers_off(v)
    built(m.gic, "vGIC").learn_current([mpidr_of(v) for v in m.vcpus])
    for plan in plans:
        plan.make_layout()
        plan.read_current()


def load_state(m: Machine, snap: fmt.Snapshot, clock: str, plans: List[vcpu_state.WritePlan],
               states: Optional[List[vcpu_state.VcpuState]] = None, write_fixed: bool = False,
               timing: Optional[Dict[str, float]] = None, inject: bool = True) -> Dict:
    """The second half of :func:`build_from` on a machine :func:`build_fixed`
    built (from ``snap`` or, in a live migration, from an earlier state of
    the same machine): vGIC state, the vCPUs' other registers (SVCR first),
    events and MP state, device state. Refuses, before writing anything, a
    state whose vCPUs need other ID registers, vector lengths or features
    than the ones built. Returns the snapshot's RAM region entry.
    ``timing``: filled with the milliseconds of its parts and the number
    of vCPU registers written. Without ``inject``, no pending SError or
    abort of the vCPU events is made pending (:func:`prepare_load`)."""
    vcpu_state.check_clock(clock)
    t0 = time.monotonic()
    machine = snap.manifest["machine"]
    states = _sorted_states(snap, plans) if states is None else states
    if len(states) != len(m.vcpus) or len(plans) != len(m.vcpus):
        raise fmt.SnapshotError(f"snapshot has {len(states)} vCPUs, the machine built has {len(m.vcpus)}")
    for k, (v, st) in enumerate(zip(m.vcpus, states)):
        plan = plans[k]
        fixed = plan.fixed
        if not plan.fits(st):  # another register set (e.g. SVCR.ZA changed): its own order
            plans[k] = plan = vcpu_state.WritePlan(v, st, m.sme_bit)
        if v.index != st.index or plan.fixed_key(st) != fixed:
            raise fmt.SnapshotError(f"vCPU {st.index}'s ID registers, vector lengths or features differ "
                                    "from the ones its vCPU was built with")
    # The vGIC before the vCPU registers: writing a timer register makes KVM
    # compute the timer's interrupt line and raise it in the vGIC; before the
    # vGIC exists that is lost, and the timer line stays dead (the guest
    # never gets another tick). The timers' own PPI levels therefore come from
    # the timer registers, written last, not from the saved vGIC line levels.
    t1 = time.monotonic()
    built(m.gic, "vGIC").restore(_without_timer_levels(machine["gic"]["state"]), [mpidr_of(v) for v in m.vcpus])
    t2 = time.monotonic()
    cntfrq = hostinfo.cntfrq(m.kvm)  # this host's (check() refuses a snapshot taken at another)
    for v, st, plan in zip(m.vcpus, states, plans):
        if write_fixed:  # build_fixed left them (a snapshot restore)
            plan.write_fixed(v, st)
        plan.write_rest(v, st, clock=clock, cntfrq=cntfrq, inject=inject)
    t3 = time.monotonic()
    _load_devices(m, machine["devices"])
    if timing is not None:
        timing.update(vcpu_decode=_ms(t0, t1), vgic=_ms(t1, t2), vcpus=_ms(t2, t3),
                      devices=_ms(t3, time.monotonic()), registers_written=sum(p.written for p in plans))
    return machine["memory"][0]


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000, 1)


class RamVerifier:
    """Checks the CRC-32 of every RAM chunk of a version-2 snapshot while the
    restored guest runs, and ends the machine with the reason at the first
    chunk that fails (the guest may have used it already: the trade-off
    docs/snapshot-format.md states). It starts once the guest runs, and
    checks at a lower CPU priority than the vCPUs. :meth:`close` stops and
    joins it."""

    START_WAIT = 2.0  # seconds: the longest it waits for the first KVM_RUN before checking anyway

    def __init__(self, m: Machine, snap: fmt.Snapshot):
        self.failed: Optional[str] = None
        self._stop = threading.Event()
        self._thread = _threads.start_daemon(self._run, (m, snap), "pyvmm-ram-verify")

    def _run(self, m: Machine, snap: fmt.Snapshot) -> None:
        # Start once a vCPU entered the guest (or after START_WAIT seconds, e.g. for a VM
        # restored paused): until then the check would only compete with the restore.
        deadline = time.monotonic() + self.START_WAIT
        while m.first_run_ns is None and time.monotonic() < deadline:
            if self._stop.wait(0.01):
                return
        try:
            bad = snap.verify_ram(self._stop, background=True)
        except Exception as e:  # noqa: BLE001 (a file that cannot be read fails the same way)
            bad = f"its memory cannot be read ({type(e).__name__}: {e})"
        if bad and not self._stop.is_set():
            self.failed = bad
            m.finish(ExitStatus.ERROR, f"the restored snapshot's {bad}; the VM was stopped")
        elif not bad:
            snap.close()  # the mappings stay; the file is no longer needed open

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def check_virtio_slot(i: int, saved: Dict, base: int, device_id: int) -> None:
    """The saved virtio device ``i`` is the machine's: same address, same device type;
    the message says which differs."""
    saved_base, saved_id = int(saved["base"]), int(saved["device_id"])
    if saved_base != base:
        raise fmt.SnapshotError(f"snapshot virtio device {i} is at {saved_base:#x}, the machine's is at {base:#x}")
    if saved_id != device_id:
        raise fmt.SnapshotError(f"snapshot virtio device at {base:#x} has device id {saved_id}, "
                                f"the machine's there has device id {device_id}")


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

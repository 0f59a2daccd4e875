"""The snapshot manifest checked field by field before anything uses it
(docs/snapshot-format.md, "Manifest"). A snapshot file is outside input:
every key, type, range and cross-reference is checked here with the one
StateReader the devices use, so a malformed manifest is refused with a
message naming the field (``snapshot vcpus[0] state: 'mp_state' must be an
integer in 0x0..0xa, not 1099511627776``) and exit status 2, whatever the
command (restore, inspect, diff, inspect --za-png), and nothing downstream
meets a wrong type. Device and vGIC states are checked by their own
``load_state``/``restore`` with the same reader.

Values a host judges (vector lengths, CNTFRQ, SME) are checked by restore
against the host; the machine configuration goes through the checks
``pyvmm run`` makes on its options (``check_options``), so restore accepts
nothing ``run`` refuses.
"""
from __future__ import annotations

import mmap
from typing import Dict, List, Optional

from ..boot import layout
from ..devices.state import StateReader
from ..devices.virtio_mmio import TRIGGER_EDGE, saved_trigger
from ..errors import UsageProblem

KINDS = ("machine", "baremetal")
_U63 = (1 << 63) - 1
MAX_MP_STATE = 10  # KVM_MP_STATE_SUSPENDED, the highest arm64 uses
MP_STATE_STOPPED = 5
VCPU_EVENTS_BYTES = 64  # sizeof(struct kvm_vcpu_events) on arm64
MAX_REGISTERS = 8192
MAX_PATH = 4096
BAREMETAL_RAM_MAX = 4 << 30
_SVE_BIT = 4  # KVM_ARM_VCPU_SVE
_TOP = ("kind", "created_by", "created_at_ns", "host", "machine", "vcpus")
# Filled in when the snapshot is written (and checked by format.decode when
# read); a snapshot taken in memory and restored at once has neither yet.
_TOP_WRITTEN = ("format_version", "blobs", "ram", "seal", "chain")
_VCPU = ("index", "features", "sve_vls", "sme_vls", "svcr", "mp_state", "events", "saved_at_ns", "register_count")
_REGION = ("slot", "gpa", "size", "blob", "stored_pages")
CONFIG_KEYS = ("kernel", "initrd", "firmware", "cmdline", "mem", "cpus", "sve_max_vl", "sme_max_vl",
               "sve", "console", "on_reboot", "disks")
CONFIG_KEYS_SINCE = ("sme", "pmu", "pauth", "rng", "nets", "vsock")  # absent in snapshots made before they existed


def _bounded(r: StateReader, key: str, lo: int, hi: int) -> List:
    """The list under ``key``, with ``lo``..``hi`` entries."""
    value = r.list(key)
    if not lo <= len(value) <= hi:
        raise r.fail(f"{key!r} has {len(value)} entries, not {lo}..{hi}")
    return value


def _vqs(r: StateReader, key: str):
    """A vector-length set: null, or VQs 1..16 strictly increasing."""
    value = r.ints(key, 1, 16, nullable=True)
    if value is not None and (len(value) > 16 or any(a >= b for a, b in zip(value, value[1:]))):
        raise r.fail(f"{key!r} must be strictly increasing, not {value}")
    return value


def check(snap) -> None:
    """Refuse a malformed manifest (UsageProblem, exit 2, the field named)."""
    man = snap.manifest
    r = StateReader("snapshot manifest", man, _TOP, optional=_TOP_WRITTEN)
    kind = r.str("kind")
    if kind not in KINDS:
        raise r.fail(f"'kind' must be one of {', '.join(KINDS)}, not {kind!r}")
    r.str("created_by")
    r.int("created_at_ns", 0, _U63)
    h = StateReader("snapshot host", r.dict("host"), ("machine", "kernel"))
    h.str("machine")
    h.str("kernel")
    machine = r.dict("machine")
    if kind == "machine":
        max_vcpus, sme_bit, cpus = layout.MAX_VCPUS, _machine(snap, machine), machine["config"]["cpus"]
    else:
        max_vcpus, sme_bit, cpus = 1, _baremetal(snap, machine), 1
    vcpus = _bounded(r, "vcpus", 1, max_vcpus)
    if len(vcpus) != cpus:
        raise r.fail(f"'vcpus' has {len(vcpus)} entries for a {cpus}-vCPU machine")
    states = [_vcpu(i, v, sme_bit, snap) for i, v in enumerate(vcpus)]
    if all(s == MP_STATE_STOPPED for s in states):
        raise UsageProblem("snapshot vcpus: every vCPU is stopped (mp_state 5): the guest could never run again")


def _vcpu(i: int, meta, sme_bit, snap) -> int:
    r = StateReader(f"snapshot vcpus[{i}]", meta, _VCPU)
    if r.int("index", 0, layout.MAX_VCPUS - 1) != i:
        raise r.fail(f"'index' is {meta['index']}, not its position {i}")
    features = r.ints("features", 0, 255)
    if len(set(features)) != len(features) or len(features) > 16:
        raise r.fail(f"'features' repeats a bit: {features}")
    sve, sme = _vqs(r, "sve_vls"), _vqs(r, "sme_vls")
    if sve is None and _SVE_BIT in features:
        raise r.fail("'sve_vls' is null while the SVE feature bit is set")
    has_sme = sme_bit is not None and sme_bit in features
    if (sme is not None) != has_sme:
        raise r.fail(f"'sme_vls' is {sme} while the vCPU {'has' if has_sme else 'has no'} SME "
                     f"(machine sme_bit {sme_bit})")
    for vls, what in ((sve, "sve_vls"), (sme, "sme_vls")):
        if vls is not None and not vls:
            raise r.fail(f"{what!r} is empty: a vCPU with the feature has at least one length")
    svcr = r.int("svcr", 0, 3)
    if svcr and not has_sme:
        raise r.fail(f"'svcr' is {svcr:#x} on a vCPU without SME")
    mp_state = r.int("mp_state", 0, MAX_MP_STATE)
    events = r.bytes("events", VCPU_EVENTS_BYTES)
    if len(events) != VCPU_EVENTS_BYTES:
        raise r.fail(f"'events' holds {len(events)} bytes, not the {VCPU_EVENTS_BYTES} of struct kvm_vcpu_events")
    r.int("saved_at_ns", 0, _U63)
    r.int("register_count", 0, MAX_REGISTERS)
    if f"vcpu{i}.regs" not in snap.blobs:
        raise r.fail(f"its register blob 'vcpu{i}.regs' is not in the file")
    return mp_state


def _region(snap, regions: List, what: str, size_check) -> Dict:
    if len(regions) != 1:
        raise UsageProblem(f"{what}: {len(regions)} RAM regions; pyvmm saves exactly one")
    r = StateReader(f"{what}[0]", regions[0], _REGION)
    r.int("slot", 0, 0)
    gpa = r.int("gpa", 0, (1 << 52) - 1)
    size = r.int("size", mmap.PAGESIZE, 1 << 52)
    if size % mmap.PAGESIZE or gpa % mmap.PAGESIZE:
        raise r.fail(f"RAM at {gpa:#x} size {size:#x} is not page aligned")
    size_check(r, gpa, size)
    r.int("stored_pages", 0, size // mmap.PAGESIZE)
    blob = r.str("blob")
    if blob not in snap.blobs:
        raise r.fail(f"blob {blob!r} is not in the file")
    return regions[0]


def _machine(snap, machine) -> Optional[int]:
    r = StateReader("snapshot machine", machine, ("cntfrq", "gic", "sme_bit", "config", "memory", "devices"))
    r.int("cntfrq", 1, 0xFFFFFFFF)
    sme_bit = r.int_or_none("sme_bit", 0, 255)
    g = StateReader("snapshot machine.gic", r.dict("gic"), ("model", "state"))
    g.str("model")
    g.dict("state")
    config = config_from_manifest(r.dict("config"))

    def ram(rr, gpa, size):
        if gpa != layout.RAM_BASE:
            raise rr.fail(f"RAM at {gpa:#x} is not at {layout.RAM_BASE:#x}, where pyvmm puts it")
        if size != config.mem:
            raise rr.fail(f"RAM of {size} bytes does not match the configuration's {config.mem}")
    _region(snap, _bounded(r, "memory", 1, 1), "snapshot machine.memory", ram)
    d = StateReader("snapshot machine.devices", r.dict("devices"), ("uart", "virtio"), optional=("pci",))
    d.dict("uart")
    for i, entry in enumerate(_bounded(d, "virtio", 0, layout.VIRTIO_SLOTS)):
        v = StateReader(f"snapshot machine.devices.virtio[{i}]", entry, ("base", "device_id", "state"))
        v.int("base", 0, (1 << 48) - 1)
        v.int("device_id", 0, 0xFFFFFFFF)
        v.dict("state")
    _pci(d, config)
    virtio_trigger(machine["devices"])
    return sme_bit


def _pci(d: StateReader, config) -> None:
    """The "pci" section (absent in snapshots from before virtio-pci could be
    saved): present exactly when the configuration has virtio-pci devices,
    one function each."""
    from ..machine.pci_devices import check_state

    want = sum(1 for n in config.nets if n.transport == "pci")
    if not d.has("pci"):
        if want:
            raise d.fail(f"lacks 'pci' while its configuration has {want} virtio-pci devices")
        return
    if not want:
        raise d.fail("has 'pci' while its configuration has no virtio-pci device")
    pci = check_state(d.state["pci"])
    if len(pci["functions"]) != want:
        raise d.fail(f"'pci' has {len(pci['functions'])} functions, its configuration {want} virtio-pci devices")


def virtio_trigger(devices: Dict) -> str:
    """The trigger type of a checked snapshot's virtio interrupts, one for
    all: a snapshot taken before edge-triggered virtio interrupts is level
    (its guest configured the SPIs so from the device tree it booted with)
    and is restored so; one that mixes both is refused."""
    triggers = {saved_trigger(v["state"]) for v in devices.get("virtio", [])}
    if len(triggers) > 1:
        raise UsageProblem("snapshot machine.devices.virtio: edge- and level-triggered interrupts mixed; "
                           "pyvmm saves one kind per machine")
    return triggers.pop() if triggers else TRIGGER_EDGE


def _baremetal(snap, machine) -> Optional[int]:
    r = StateReader("snapshot machine", machine, ("cntfrq", "gic", "sme_bit", "features", "memory"))
    r.int("cntfrq", 1, 0xFFFFFFFF)
    if machine["gic"] is not None:
        raise r.fail("'gic' must be null in a bare-metal snapshot")
    sme_bit = r.int_or_none("sme_bit", 0, 255)
    if len(r.ints("features", 0, 255)) > 16:
        raise r.fail("'features' has more than 16 bits")

    def ram(rr, gpa, size):
        if size > BAREMETAL_RAM_MAX:
            raise rr.fail(f"RAM of {size} bytes is more than the {BAREMETAL_RAM_MAX >> 30} GiB a bare-metal VM has")
    _region(snap, _bounded(r, "memory", 1, 1), "snapshot machine.memory", ram)
    return sme_bit


def config_from_manifest(d):
    """The machine configuration in a snapshot, every field's type checked,
    then the checks ``pyvmm run`` makes on its options (one validation path)."""
    from ..machine import DiskSpec, MachineConfig, check_options, devspec

    r = StateReader("snapshot machine.config", d, CONFIG_KEYS, optional=CONFIG_KEYS_SINCE)
    kw = {k: r.str(k, optional=True) for k in ("kernel", "initrd", "firmware", "cmdline")}
    for k, v in kw.items():
        if v is not None and len(v) > MAX_PATH:
            raise r.fail(f"{k!r} is {len(v)} characters long, more than {MAX_PATH}")
    if kw["kernel"] and kw["firmware"]:
        raise r.fail("'kernel' and 'firmware' are both set; a machine boots one of them")
    kw.update(mem=r.int("mem", 0, _U63), cpus=r.int("cpus", 0, _U63),
              sve_max_vl=r.int_or_none("sve_max_vl", 0, _U63),
              sme_max_vl=r.int_or_none("sme_max_vl", 0, _U63),
              sve=r.bool("sve"), console=r.str("console"), on_reboot=r.str("on_reboot"))
    kw["sme"] = r.bool("sme") if "sme" in d else kw["sme_max_vl"] is not None
    kw["pmu"] = r.bool("pmu") if "pmu" in d else False
    kw["pauth"] = r.bool("pauth") if "pauth" in d else False
    disks = []
    for i, x in enumerate(_bounded(r, "disks", 0, layout.VIRTIO_SLOTS)):
        dr = StateReader(f"snapshot machine.config.disks[{i}]", x, ("path", "readonly"))
        path = dr.str("path")
        if not path or len(path) > MAX_PATH or "\0" in path:
            raise dr.fail(f"'path' must be a file name of 1..{MAX_PATH} characters without NUL")
        disks.append(DiskSpec(path, dr.bool("readonly")))
    # snapshots from before virtio-rng, virtio-net and virtio-vsock have none of them;
    # taps and CIDs go through the --net/--vsock parsers, so they get the options' checks
    kw["rng"] = r.bool("rng") if "rng" in d else False
    nets = []
    for i, x in enumerate(_bounded(r, "nets", 0, layout.VIRTIO_SLOTS) if "nets" in d else []):
        nr = StateReader(f"snapshot machine.config.nets[{i}]", x, ("tap", "mac", "vhost"), optional=("transport",))
        transport = nr.str("transport") if nr.has("transport") else "mmio"  # absent: from before virtio-pci
        if transport not in devspec.NET_TRANSPORTS:
            raise nr.fail(f"'transport' must be one of {', '.join(devspec.NET_TRANSPORTS)}, not {transport[:20]!r}")
        try:
            nets.append(devspec.parse_net(f"tap={nr.str('tap')},mac={nr.str('mac')},"
                                          f"vhost={'on' if nr.bool('vhost') else 'off'},transport={transport}"))
        except UsageProblem as e:
            raise nr.fail(e.message) from None
    vsock = None
    if d.get("vsock") is not None:
        vr = StateReader("snapshot machine.config.vsock", d["vsock"], ("cid",))
        try:
            vsock = devspec.parse_vsock(f"cid={vr.uint('cid', 32)}")
        except UsageProblem as e:
            raise vr.fail(e.message) from None
    config = MachineConfig(disks=disks, nets=nets, vsock=vsock, **kw)
    try:
        check_options(config)
    except UsageProblem as e:
        raise UsageProblem(f"snapshot machine.config: {e.message}") from None
    return config

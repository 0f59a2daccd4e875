"""Valid snapshot objects for host tests (no VM): a ``machine`` snapshot as
pyvmm run's snapshot would write it, small enough to build per example, that
passes pyvmm/snapshot/schema.py; tests change one thing and see what happens."""
import base64

from pyvmm.boot import layout
from pyvmm.machine import MachineConfig
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import machine_snapshot as ms
from pyvmm.snapshot.vm_snapshot import header

MiB = 1 << 20
PAGE = 4096
CNTFRQ = 62_500_000


def ram_blob(size: int, pages=None) -> bytes:
    """A RAM blob (docs/snapshot-format.md: page bitmap, then the stored pages)
    for ``size`` bytes of RAM holding ``pages`` {page number: 4096 bytes}, without
    building the RAM itself. Default: page 3 full of 0xcc, the blob's last bytes."""
    pages = {3: b"\xcc" * PAGE} if pages is None else pages
    bitmap = bytearray((size // PAGE + 7) // 8)
    for n in pages:
        bitmap[n // 8] |= 1 << (n % 8)
    return bytes(bitmap) + b"".join(pages[n] for n in sorted(pages))


def vcpu_meta(index: int, mp_state: int = 0, **changes):
    meta = {"index": index, "features": [2, 4], "sve_vls": [1, 2], "sme_vls": None, "svcr": 0,
            "mp_state": mp_state, "events": base64.b64encode(bytes(64)).decode(), "saved_at_ns": 1,
            "register_count": 0}
    meta.update(changes)
    return meta


def machine_snapshot(config: MachineConfig = None, seal=None, vcpus=None, blobs=None, pages=None,
                     **machine_overrides) -> fmt.Snapshot:
    """A decoded machine snapshot (blob table filled in by a real encode).
    ``vcpus``: manifest entries (default: one per config.cpus, vCPU 0 running);
    ``blobs``: the vCPU register blobs (default: empty)."""
    config = config or MachineConfig(kernel="/k/Image", cmdline="quiet", mem=256 * MiB, cpus=1)
    machine = {"cntfrq": CNTFRQ, "gic": {"model": "gicv3", "state": {}}, "sme_bit": None,
               "config": ms.config_to_json(config),
               "memory": [{"slot": 0, "gpa": layout.RAM_BASE, "size": config.mem, "blob": "ram0",
                           "stored_pages": len(pages) if pages is not None else 1}],
               "devices": {"uart": {}, "virtio": []}}
    machine.update(machine_overrides)
    manifest = header("machine")
    manifest.update({"machine": machine,
                     "vcpus": vcpus if vcpus is not None else
                     [vcpu_meta(i, 5 if i else 0) for i in range(config.cpus)]})
    all_blobs = {"ram0": ram_blob(config.mem, pages)}
    all_blobs.update(blobs if blobs is not None else {f"vcpu{i}.regs": b"" for i in range(config.cpus)})
    return fmt.decode(fmt.encode(fmt.Snapshot(manifest, all_blobs, seal=seal)))

"""The manifest parts every snapshot kind shares: its header, the vCPU states,
the CNTFRQ check and guest RAM packed into and unpacked from blobs."""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Optional, Tuple

from .. import hostinfo
from .._version import __version__
from ..errors import HostUnsupported, UsageProblem
from . import format as fmt
from . import memory_image, ram_image, vcpu_state

Progress = Optional[Callable[[int, int], None]]


def header(kind: str) -> dict:
    """The manifest keys every snapshot kind starts with."""
    uname = os.uname()
    return {"kind": kind, "created_by": f"pyvmm {__version__}", "created_at_ns": time.time_ns(),
            "host": {"machine": uname.machine, "kernel": uname.release}}


def check_cntfrq(saved: int, kvm=None) -> int:
    """This host's CNTFRQ_EL0 (read through ``kvm``), refusing a snapshot taken
    at another frequency (the guest's counters and timer deadlines would run
    at a different pace)."""
    host = hostinfo.cntfrq(kvm)
    if host != saved:
        raise HostUnsupported(f"CNTFRQ differs: snapshot {saved} Hz, this host {host} Hz",
                              "restore on a host whose timer runs at the same frequency")
    return host


def vcpu_states(snap: fmt.Snapshot,
                layouts: Optional[Dict[int, vcpu_state.BlobLayout]] = None) -> List[vcpu_state.VcpuState]:
    """The snapshot's vCPU states, each with its register blob (``layouts``:
    by vCPU index, the blob expected, see :class:`~pyvmm.snapshot.vcpu_state.BlobLayout`)."""
    out = []
    for meta in snap.manifest.get("vcpus", []):
        try:
            out.append(vcpu_state.VcpuState.from_json(meta, fmt.small_blob(snap, f"vcpu{meta['index']}.regs"),
                                                      (layouts or {}).get(meta["index"])))
        except (KeyError, TypeError, ValueError) as e:
            raise fmt.SnapshotError(f"snapshot vCPU state is invalid ({e})") from None
        except UsageProblem as e:
            raise fmt.SnapshotError(f"snapshot vCPU state is invalid ({e.message})") from None
    return out


def _offset(progress: Progress, base: int, total: int) -> Progress:
    """``progress`` for one region: its byte counts moved by ``base``, out of ``total``."""
    if progress is None:
        return None
    report = progress
    return lambda done, _region_total: report(base + done, total)


def pack_ram(mem, progress: Progress = None) -> Tuple[Dict[str, fmt.Blob], List[dict]]:
    """Every RAM region of ``mem`` (a :class:`pyvmm.memory.GuestMemory`),
    as it is now: (blobs by name, the manifest's region entries). The blobs
    are the regions' own buffers (:class:`~pyvmm.snapshot.ram_image.LiveRam`):
    the machine must stay paused until the snapshot is written, which fills
    in each entry's ``stored_pages``. ``progress`` is called once, at the end."""
    blobs: Dict[str, fmt.Blob] = {}
    regions = []
    for r in mem.regions:
        name = f"ram{r.slot}"
        entry = {"slot": r.slot, "gpa": r.gpa, "size": r.size, "blob": name, "stored_pages": 0}
        blobs[name] = ram_image.LiveRam(r.mm, entry)
        regions.append(entry)
    total = sum(r.size for r in mem.regions)
    if progress:
        progress(total, total)
    return blobs, regions


def empty_ram(mem) -> Tuple[Dict[str, fmt.Blob], List[dict]]:
    """:func:`pack_ram`'s result for all-zero memory of ``mem``'s shape
    (nothing is read): a machine state without its memory."""
    blobs: Dict[str, fmt.Blob] = {}
    regions = []
    for r in mem.regions:
        name = f"ram{r.slot}"
        blobs[name] = bytes((r.size // memory_image.PAGE + 7) // 8)
        regions.append({"slot": r.slot, "gpa": r.gpa, "size": r.size, "blob": name, "stored_pages": 0})
    return blobs, regions


def unpack_ram(snap: fmt.Snapshot, region: dict, mem, progress: Progress = None) -> str:
    """Put the saved ``region`` (a manifest region entry) into ``mem``'s
    region at the same guest address, refusing a malformed blob. Version-2
    RAM is mapped from the file where it can be; returns how it was loaded
    ("mapped", or "read" and the reason)."""
    base = int(region["gpa"])
    blob = snap.blobs.get(region["blob"])
    try:
        if isinstance(blob, ram_image.MappedRam):
            if int(region["size"]) != blob.size:
                raise ValueError(f"region of {region['size']} bytes, its RAM image {blob.size}")
            why = None if snap.fd >= 0 else "the snapshot was not read from a file"
            if why is None and mem.regions[0].fd >= 0:
                why = "guest RAM is shared with a vhost-user daemon (virtio-fs)"
            if why is None:
                for off, fd, file_off, n in blob.map_runs():  # an incremental snapshot: from each file of its chain
                    mem.map_file(base + off, n, fd, file_off)
                if progress:
                    progress(blob.size, blob.size)
                return "mapped"
            blob.copy_into(lambda off, data: mem.write(base + off, data), progress)
            return f"read: {why}"
        if isinstance(blob, ram_image.LiveRam):
            for off, data in blob.runs():
                mem.write(base + off, data)
            return "read: a snapshot in memory"
        memory_image.unpack_into(blob, int(region["size"]), lambda off, data: mem.write(base + off, data), progress)
        return "read: format version 1"
    except (KeyError, ValueError, TypeError) as e:
        raise fmt.SnapshotError(f"snapshot memory is invalid ({e})") from None

"""Readable views of snapshots: ``inspect`` (one) and ``diff`` (two). Pure."""
from __future__ import annotations

import base64
from typing import Any, Dict, List, Tuple

from ..arm64 import regs
from . import format as fmt
from . import memory_image, schema
from .manifest import vcpu_states


def _hex(value: bytes) -> str:
    if len(value) <= 8:
        return f"{int.from_bytes(value, 'little'):#x}"
    return value.hex()


def _trim(value: bytes) -> bytes:
    """Vector registers carry zeroes beyond the VL: show the meaningful part."""
    end = len(value)
    while end > 16 and value[end - 1] == 0:
        end -= 1
    return value[:max(16, (end + 15) // 16 * 16)]


def inspect(snap: fmt.Snapshot) -> Dict:
    schema.check(snap)
    m = snap.manifest
    machine = m.get("machine", {})
    memory: List[Dict[str, Any]] = []
    vcpus: List[Dict[str, Any]] = []
    out = {"format_version": m.get("format_version"), "kind": m.get("kind"), "chain": m.get("chain"),
           "created_by": m.get("created_by"), "host": m.get("host"),
           "machine": {k: v for k, v in machine.items() if k != "memory"},
           "memory": memory, "vcpus": vcpus}
    for r in machine.get("memory", []):
        memory.append({"gpa": f"{int(r['gpa']):#x}", "size": int(r["size"]),
                              "stored_pages": r.get("stored_pages"),
                              "blob_bytes": len(snap.blobs.get(r["blob"], b""))})
    for state in vcpu_states(snap):
        named = {}
        vector: Dict[str, Any] = {"svcr": {"raw": state.svcr, "SM": state.svcr & 1, "ZA": state.svcr >> 1 & 1},
                  "sve_vector_lengths": [128 * q for q in state.sve_vls or []],
                  "sme_vector_lengths": [128 * q for q in state.sme_vls or []],
                  "za_rows": 0}
        for reg_id, value in state.registers:
            d = regs.decode(reg_id)
            if d.kind == "sme_za":
                vector["za_rows"] += 1
            shown = _trim(value) if d.size > 8 else value
            named[d.name] = _hex(shown)
        vcpus.append({"index": state.index, "features": state.features,
                             "mp_state": state.mp_state, "vector": vector, "registers": named})
    return out


def render_inspect(info: Dict) -> str:
    lines = [f"pyvmm snapshot, format {info['format_version']}, kind {info['kind']}, "
             f"by {info['created_by']} on {info['host'].get('machine')} {info['host'].get('kernel')}"]
    link = info.get("chain")
    if link and link.get("parent"):
        lines.append(f"chain: incremental, depth {link['depth']}, parent {link['parent']['path']} "
                     f"(SHA-256 {link['parent']['head_sha256'][:16]}...)")
    lines += _machine_lines(info["machine"])
    for r in info["memory"]:
        lines.append(f"memory: {r['gpa']} {r['size'] >> 20} MiB, {r['stored_pages']} non-zero pages stored "
                     f"({r['blob_bytes']} bytes)")
    if info.get("verified"):
        lines.append(f"verified: {info['verified']}")
    for v in info["vcpus"]:
        vec = v["vector"]
        lines.append(f"vcpu{v['index']}: features {v['features']}, mp_state {v['mp_state']}, "
                     f"SVCR {vec['svcr']['raw']:#x} (SM={vec['svcr']['SM']} ZA={vec['svcr']['ZA']}), "
                     f"SVE VLs {vec['sve_vector_lengths'] or '-'}, SME VLs {vec['sme_vector_lengths'] or '-'}, "
                     f"ZA rows saved {vec['za_rows']}")
        width = max((len(n) for n in v["registers"]), default=0)
        for name, value in v["registers"].items():
            lines.append(f"  {name.ljust(width)}  {value}")
    return "\n".join(lines)


def differences(a, b, path: str = "") -> List[Tuple[str, object, object]]:
    """(path, a, b) for each leaf at which two JSON-like values differ: a
    changed GIC register word shows as machine.gic.state.dist.ISPENDR[2]."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += differences(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [(path, a, b)]


def _show(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v > 9:
        return f"{v:#x}"
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


# Virtio device ids (virtio 1.2, section 5 "Device Types") of the devices
# pyvmm has, by name, for the mmio and pci lines alike.
VIRTIO_NAMES = {1: "virtio-net", 2: "virtio-blk", 3: "virtio-console", 4: "virtio-rng",
                19: "virtio-vsock", 26: "virtio-fs"}


def virtio_name(device_id) -> str:
    return VIRTIO_NAMES.get(device_id, f"virtio device {device_id}")


def _machine_lines(machine: Dict) -> List[str]:
    """The machine in a few lines (--json has all of it)."""
    config, gic, devices = machine.get("config"), machine.get("gic"), machine.get("devices")
    if not config:  # a bare-metal snapshot: its machine dict is small
        return [f"machine: {machine}"]
    lines = [f"machine: {config.get('cpus')} vCPUs, {int(config.get('mem', 0)) >> 20} MiB, "
             f"console {config.get('console')}, SVE {'on' if config.get('sve') else 'off'}"
             f"{', SME up to ' + str(config['sme_max_vl']) + ' bits' if config.get('sme_max_vl') else ''}, "
             f"CNTFRQ {machine.get('cntfrq')} Hz, kernel {config.get('kernel') or config.get('firmware')}"]
    for d in config.get("disks", []):
        lines.append(f"disk: {d['path']}{' (read-only)' if d.get('readonly') else ''}")
    if isinstance(gic, dict):
        state = gic.get("state") or {}
        pending = sum(bin(w).count("1") for w in (state.get("dist") or {}).get("ISPENDR", []))
        enabled = sum(bin(w).count("1") for w in (state.get("dist") or {}).get("ISENABLER", []))
        lines.append(f"gic: {gic.get('model')}, {state.get('nr_irqs')} interrupts, "
                     f"{enabled} SPIs enabled, {pending} pending")
    if isinstance(devices, dict):
        uart = devices.get("uart") or {}
        lines.append(f"pl011: interrupt line {'high' if uart.get('level') else 'low'}, "
                     f"{len(base64.b64decode(uart.get('rx', '')))} input bytes pending")
        for v in devices.get("virtio", []):
            st = v.get("state", {})
            ready = sum(1 for q in st.get("queues", []) if q.get("ready"))
            lines.append(f"{virtio_name(v.get('device_id'))} on mmio {int(v.get('base', 0)):#x}: "
                         f"status {st.get('status', 0):#x}, "
                         f"{ready} of {len(st.get('queues', []))} queues ready"
                         f"{', error: ' + st['error'] if st.get('error') else ''}")
        pci = devices.get("pci")
        if isinstance(pci, dict):
            ctlr = (pci.get("its") or {}).get("GITS_CTLR", 0)
            lines.append(f"its: {'enabled' if ctlr & 1 else 'disabled'}")
            for f in pci.get("functions", []):
                st = f.get("state", {})
                tr = st.get("transport", {})
                ready = sum(1 for q in tr.get("queues", []) if q.get("ready"))
                lines.append(f"{virtio_name(f.get('device_id'))} on pci 00:{int(f.get('slot', 0)):02x}.0: "
                             f"status {tr.get('status', 0):#x}, {ready} of {len(tr.get('queues', []))} queues ready, "
                             f"{len(st.get('pending', []))} MSI-X vectors owed")
    return lines


def diff(a: fmt.Snapshot, b: fmt.Snapshot) -> List[str]:
    """Only what changed: machine fields, registers by name, memory pages."""
    schema.check(a)
    schema.check(b)
    out: List[str] = []
    ma, mb = a.manifest.get("machine", {}), b.manifest.get("machine", {})
    for path, x, y in differences({k: v for k, v in ma.items() if k != "memory"},
                                  {k: v for k, v in mb.items() if k != "memory"}, "machine"):
        out.append(f"{path}: {_show(x)} -> {_show(y)}")
    sa = {s.index: s for s in vcpu_states(a)}
    sb = {s.index: s for s in vcpu_states(b)}
    for idx in sorted(set(sa) | set(sb)):
        if idx not in sa or idx not in sb:
            out.append(f"vcpu{idx}: only in {'B' if idx in sb else 'A'}")
            continue
        x, y = sa[idx], sb[idx]
        for field in ("features", "sve_vls", "sme_vls", "svcr", "mp_state", "events"):
            if getattr(x, field) != getattr(y, field):
                out.append(f"vcpu{idx}.{field}: {getattr(x, field)!r} -> {getattr(y, field)!r}")
        rx, ry = x.register_map(), y.register_map()
        for reg_id in sorted(set(rx) | set(ry)):
            name = regs.name(reg_id)
            if reg_id not in rx or reg_id not in ry:
                out.append(f"vcpu{idx}.{name}: only in {'B' if reg_id in ry else 'A'}")
            elif rx[reg_id] != ry[reg_id]:
                if regs.size_of(reg_id) > 8:
                    changed = [i for i in range(len(rx[reg_id])) if rx[reg_id][i] != ry[reg_id][i]]
                    out.append(f"vcpu{idx}.{name}: {len(changed)} bytes differ (first at byte {changed[0]})")
                else:
                    out.append(f"vcpu{idx}.{name}: {_hex(rx[reg_id])} -> {_hex(ry[reg_id])}")
    ra = {r["gpa"]: r for r in ma.get("memory", [])}
    rb = {r["gpa"]: r for r in mb.get("memory", [])}
    for gpa in sorted(set(ra) | set(rb)):
        if gpa not in ra or gpa not in rb or ra[gpa]["size"] != rb[gpa]["size"]:
            out.append(f"memory at {int(gpa):#x}: layout differs")
            continue
        pa = memory_image.pages(a.blobs[ra[gpa]["blob"]], int(ra[gpa]["size"]))
        pb = memory_image.pages(b.blobs[rb[gpa]["blob"]], int(rb[gpa]["size"]))
        zero = bytes(memory_image.PAGE)
        changed = [off for off in sorted(set(pa) | set(pb)) if pa.get(off, zero) != pb.get(off, zero)]
        if changed:
            pages = ", ".join(f"{int(gpa) + off:#x}" for off in changed[:8])
            more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            out.append(f"memory at {int(gpa):#x}: {len(changed)} pages differ ({pages}{more})")
    return out

"""Readable views of snapshots: ``inspect`` (one) and ``diff`` (two). Pure."""
from __future__ import annotations

from typing import Dict, List

from .. import regs
from . import format as fmt
from . import memory_image
from .vm_snapshot import vcpu_states


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
    m = snap.manifest
    machine = m.get("machine", {})
    out = {"format_version": m.get("format_version"), "kind": m.get("kind"),
           "created_by": m.get("created_by"), "host": m.get("host"),
           "machine": {k: v for k, v in machine.items() if k != "memory"},
           "memory": [], "vcpus": []}
    for r in machine.get("memory", []):
        out["memory"].append({"gpa": f"{int(r['gpa']):#x}", "size": int(r["size"]),
                              "stored_pages": r.get("stored_pages"),
                              "blob_bytes": len(snap.blobs.get(r["blob"], b""))})
    for state in vcpu_states(snap):
        named = {}
        vector = {"svcr": {"raw": state.svcr, "SM": state.svcr & 1, "ZA": state.svcr >> 1 & 1},
                  "sve_vector_lengths": [128 * q for q in state.sve_vls or []],
                  "sme_vector_lengths": [128 * q for q in state.sme_vls or []],
                  "za_rows": 0}
        for reg_id, value in state.registers:
            d = regs.decode(reg_id)
            if d.kind == "sme_za":
                vector["za_rows"] += 1
            shown = _trim(value) if d.size > 8 else value
            named[d.name] = _hex(shown)
        out["vcpus"].append({"index": state.index, "features": state.features,
                             "mp_state": state.mp_state, "vector": vector, "registers": named})
    return out


def render_inspect(info: Dict) -> str:
    lines = [f"pyvmm snapshot, format {info['format_version']}, kind {info['kind']}, "
             f"by {info['created_by']} on {info['host'].get('machine')} {info['host'].get('kernel')}"]
    lines.append(f"machine: {info['machine']}")
    for r in info["memory"]:
        lines.append(f"memory: {r['gpa']} {r['size'] >> 20} MiB, {r['stored_pages']} non-zero pages stored "
                     f"({r['blob_bytes']} bytes)")
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


def diff(a: fmt.Snapshot, b: fmt.Snapshot) -> List[str]:
    """Only what changed: machine fields, registers by name, memory pages."""
    out: List[str] = []
    ma, mb = a.manifest.get("machine", {}), b.manifest.get("machine", {})
    for key in sorted(set(ma) | set(mb)):
        if key != "memory" and ma.get(key) != mb.get(key):
            out.append(f"machine.{key}: {ma.get(key)!r} -> {mb.get(key)!r}")
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
        pa, pb = {}, {}
        memory_image.unpack_into(a.blobs[ra[gpa]["blob"]], int(ra[gpa]["size"]), pa.__setitem__)
        memory_image.unpack_into(b.blobs[rb[gpa]["blob"]], int(rb[gpa]["size"]), pb.__setitem__)
        zero = bytes(memory_image.PAGE)
        changed = [off for off in sorted(set(pa) | set(pb)) if pa.get(off, zero) != pb.get(off, zero)]
        if changed:
            pages = ", ".join(f"{int(gpa) + off:#x}" for off in changed[:8])
            more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            out.append(f"memory at {int(gpa):#x}: {len(changed)} pages differ ({pages}{more})")
    return out

#!/usr/bin/env python3
"""Take kernel modules, with every module they depend on, out of a Debian
linux-modules-<abi> package.

Usage: kmods.py DEB OUTDIR MODULE...

Writes each module decompressed as OUTDIR/<name>.ko and OUTDIR/order, the
file names in load order (dependencies first), for a plain ``insmod`` loop
(no depmod, no kmod needed). Dependencies are read from each module's
.modinfo "depends=" entry. A requested module that the package lacks is
reported and skipped (the kernel has it built in); a missing dependency is
an error.
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "guests", "linux"))
from mkinitramfs import decompress_module  # noqa: E402  (.ko.xz/.gz/.zst -> bytes)


def norm(name):
    return name.replace("-", "_")


def base_name(path):
    b = os.path.basename(path)
    for ext in (".xz", ".gz", ".zst"):
        if b.endswith(ext):
            b = b[:-len(ext)]
    return b[:-3] if b.endswith(".ko") else None


def depends(ko):
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko)
    if not m or not m.group(1):
        return []
    return [norm(d.decode()) for d in m.group(1).split(b",") if d]


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__.strip().splitlines()[2])
    deb, out, wanted = argv[0], argv[1], [norm(m) for m in argv[2:]]
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout
    tmp = tempfile.mkdtemp(prefix="kmods.")
    tar = os.path.join(tmp, "data.tar")
    with open(tar, "wb") as f:
        f.write(listing)
    names = subprocess.run(["tar", "-tf", tar], capture_output=True, text=True, check=True).stdout.split()
    where = {}
    for p in names:
        b = base_name(p)
        if b and "/kernel/" in p:
            where[norm(b)] = p
    data, deps = {}, {}
    todo = []
    for w in wanted:
        if w in where:
            todo.append(w)
        else:
            print(f"kmods: {w} is not a module of this kernel (built in): skipped", file=sys.stderr)
    while todo:
        batch = [m for m in dict.fromkeys(todo) if m not in data]
        todo = []
        if not batch:
            break
        subprocess.run(["tar", "-xf", tar, "-C", tmp] + [where[m] for m in batch], check=True)
        for m in batch:
            data[m] = decompress_module(os.path.join(tmp, where[m]))
            deps[m] = depends(data[m])
            for d in deps[m]:
                if d not in where:
                    sys.exit(f"kmods: {m} depends on {d}, which the package lacks")
                todo.append(d)
    order, seen = [], set()

    def visit(m):
        if m in seen:
            return
        seen.add(m)
        for d in deps[m]:
            visit(d)
        order.append(m)
    for m in data:
        visit(m)
    os.makedirs(out, exist_ok=True)
    for m in order:
        with open(os.path.join(out, f"{m}.ko"), "wb") as f:
            f.write(data[m])
    with open(os.path.join(out, "order"), "w") as f:
        f.write("".join(f"{m}.ko\n" for m in order))
    subprocess.run(["rm", "-rf", tmp], check=False)
    print(" ".join(order))


if __name__ == "__main__":
    main(sys.argv[1:])

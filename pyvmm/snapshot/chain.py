"""Chains of snapshots: incremental snapshots (``pyvmm snapshot --since``)
and their restore (docs/snapshot-format.md, "Version 3").

A version-3 file's manifest has a ``chain``: the ``lineage`` of the
running VM's dirty tracking that made it, its ``depth`` and its ``parent``
(null for a full snapshot; else the parent's file name in the same
directory and the SHA-256 of the parent's header and head). An incremental
file stores only the 1 MiB chunks of guest RAM that changed since its
parent; its chunk tables mark the others as the parent's.

Reading (:func:`resolve`, called by :func:`pyvmm.snapshot.format.load`)
follows the links to the full snapshot and refuses, with the reason, a
parent that is missing, changed (another digest), of another lineage or
depth, not version 3, or a loop; each RAM chunk then comes from the newest
file that holds it (:class:`pyvmm.snapshot.ram_image.ChainedRam`).

Writing: a running machine keeps dirty logging on after its first snapshot
(a :class:`Tracker` among the machine's owned resources, so it ends with
the machine): KVM's log of the guest's stores merged with the pages
pyvmm's device models wrote (:class:`pyvmm.dirty_log.DirtyLog`) and the
vhost-net planes logged (pyvmm/snapshot/vhost_log.py), collected
while the machine is paused for each snapshot. The log is relative to the
last snapshot this machine wrote, so ``--since`` must name exactly that
file (:func:`link_to`, :func:`check_base`); anything else is refused
before the guest is paused.
"""
from __future__ import annotations

import mmap
import os
import stat
from .._record import record
from typing import Dict, List, Optional, Set

from ..dirty_log import merge
from ..errors import PyvmmError, SnapshotError, UsageProblem
from . import format as fmt
from . import ram_image, vhost_log

MAX_CHAIN = fmt.MAX_CHAIN


def _inode(path: str):
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise SnapshotError(f"{path} is not a regular file, so not a snapshot of a chain")
    return st.st_dev, st.st_ino


def resolve(snap: fmt.Snapshot, path: str) -> List[str]:
    """Load the ancestors of the incremental snapshot ``snap`` (read from
    ``path``) and give each of its RAM regions its chunks from the whole
    chain; returns the chain's paths, newest first. The ancestors are
    closed with ``snap``. SnapshotError with the reason otherwise."""
    cur, cur_path = snap, os.path.abspath(path)
    paths = [cur_path]
    seen = {_inode(cur_path)}
    files = [snap]
    try:
        while True:
            link = cur.manifest["chain"]
            parent = link["parent"]
            if parent is None:
                break
            ppath = os.path.join(os.path.dirname(cur_path), parent["path"])
            what = f"snapshot {cur_path}'s parent {ppath}"
            try:
                inode = _inode(ppath)
            except FileNotFoundError:
                raise SnapshotError(f"snapshot {cur_path} is incremental, and its parent {ppath} does not exist",
                                    "keep every file of the chain in one directory, under its own name") from None
            except OSError as e:
                raise SnapshotError(f"{what} cannot be read: {e.strerror}") from None
            if inode in seen:
                raise SnapshotError(f"snapshot {path}'s chain loops: {ppath} is its own ancestor")
            seen.add(inode)
            try:
                p = fmt.load_one(ppath)
            except UsageProblem as e:
                raise SnapshotError(f"{what}: {e.message}") from None
            files.append(p)
            version = p.manifest.get("format_version")
            if version != 3:
                raise SnapshotError(f"{what} has format version {version}; every file of a chain is version 3")
            if p.head_sha256 != parent["head_sha256"]:
                raise SnapshotError(f"{what} changed after {os.path.basename(cur_path)} was taken from it "
                                    "(its SHA-256 differs)", "restore needs the very file it was taken from")
            pchain = p.manifest["chain"]
            if pchain["lineage"] != link["lineage"]:
                raise SnapshotError(f"{what} was not taken by the same running VM")
            if pchain["depth"] != link["depth"] - 1:
                raise SnapshotError(f"{what} is at depth {pchain['depth']} of its chain, not {link['depth'] - 1}")
            paths.append(ppath)
            cur, cur_path = p, ppath
        for name, image in snap.ram_images().items():
            images = [f.blobs.get(name) for f in files]
            if not all(isinstance(i, ram_image.MappedRam) for i in images):
                raise SnapshotError(f"snapshot {path}: RAM region {name} is missing from a file of its chain")
            try:
                snap.blobs[name] = ram_image.resolve(images)  # type: ignore[arg-type]
            except ValueError as e:
                raise SnapshotError(f"snapshot {path}'s chain: {e}") from None
    except BaseException:
        for f in files[1:]:
            f.close()
        raise
    snap.parents = files[1:]
    return paths


@record
class Link:
    """What an incremental snapshot records of its parent (:func:`link_to`)."""
    name: str  # the parent's file name (in the new file's directory)
    head_sha256: str
    lineage: str
    depth: int  # of the new file


def link_to(previous: str, out: str) -> Link:
    """The link from a new incremental snapshot ``out`` to ``previous``,
    refusing (UsageProblem or SnapshotError, one line) a previous snapshot in
    another directory, missing, damaged, not version 3, whose chain is
    broken or already MAX_CHAIN files long, or an ``out`` that is a file of
    that chain (writing it would destroy a parent)."""
    prev, out = os.path.abspath(previous), os.path.abspath(out)
    if os.path.dirname(prev) != os.path.dirname(out):
        raise UsageProblem(f"--since {previous}: the previous snapshot must be in the new one's directory "
                           f"({os.path.dirname(out)})", "a chain's files are kept together and name each other "
                                                        "by file name")
    snap = fmt.load(prev)  # with its whole chain: a missing, changed or looping parent is refused here
    try:
        version = snap.manifest.get("format_version")
        if version != 3:
            raise UsageProblem(f"--since {previous}: it has format version {version}; an incremental snapshot "
                               "follows a version-3 snapshot of the same running VM")
        chain = snap.manifest["chain"]
        if chain["depth"] + 1 >= MAX_CHAIN:
            raise UsageProblem(f"--since {previous}: the chain would have {chain['depth'] + 2} files, more than "
                               f"{MAX_CHAIN}", "take a full snapshot (without --since) to start a new chain")
        if os.path.exists(out):
            target = _inode(out)
            for p in [prev] + [str(s.path) for s in snap.parents]:
                if _inode(p) == target:
                    raise UsageProblem(f"{out} is {'the previous snapshot' if p == prev else 'a parent of ' + previous}:"
                                       " writing it would destroy the chain", "give the new snapshot another name")
        return Link(os.path.basename(prev), str(snap.head_sha256), chain["lineage"], chain["depth"] + 1)
    finally:
        snap.close()


class Tracker:
    """Dirty logging left on in a running machine after a snapshot, so that
    the next ``--since`` stores only what changed: one per machine, among
    its owned resources (closed with it)."""

    def __init__(self, m):
        self.log = vhost_log.dirty_log(m)
        self.lineage = os.urandom(16).hex()
        self.head: Optional[str] = None  # the head SHA-256 of the last snapshot written
        self.path: Optional[str] = None  # and its path
        self.depth = 0
        # pages written since that snapshot, collected (the log forgets them) but in no file yet
        self.pending: Dict[int, List[int]] = {}

    def collect(self) -> Dict[int, List[int]]:
        """Every page written since the last snapshot written (kept until :meth:`committed`)."""
        self.pending = merge(self.pending, self.log.collect())
        return self.pending

    def committed(self, snap: fmt.Snapshot, path: str) -> None:
        self.head, self.path = snap.head_sha256, path
        self.depth = snap.manifest["chain"]["depth"]
        self.pending = {}

    def close(self) -> None:
        try:
            self.log.stop()
        except PyvmmError:
            pass  # the VM is going away with it


def tracker_of(m) -> Optional[Tracker]:
    return next((o for o in m.owned if isinstance(o, Tracker)), None)


def untracked(m) -> Optional[str]:
    """Why pyvmm cannot see every write to machine ``m``'s RAM, or None."""
    return vhost_log.untracked(m)


def forget(m) -> None:
    """Stop tracking ``m``'s memory (before another user of the dirty log,
    a live migration, starts): a later ``--since`` is refused."""
    t = tracker_of(m)
    if t is not None:
        m.owned.remove(t)
        t.close()


def check_base(m, link: Link, since: str) -> None:
    """Refuse an incremental snapshot whose parent is not the last
    snapshot machine ``m`` wrote: its dirty log is relative to that one."""
    why = untracked(m)
    if why:
        raise UsageProblem(f"cannot take an incremental snapshot of this machine: {why}",
                           "take full snapshots (without --since)")
    t = tracker_of(m)
    if t is None or t.head is None:
        raise UsageProblem(f"--since {since}: this VM has taken no snapshot since it started, was restored or "
                           "reset, or since a live migration was tried (what changed is not known)",
                           "take a full snapshot first (without --since)")
    if link.lineage != t.lineage:
        raise UsageProblem(f"--since {since}: it is not a snapshot of this running VM (its latest is {t.path})",
                           "give this VM's latest snapshot, or take a full snapshot (without --since)")
    if link.head_sha256 != t.head:
        raise UsageProblem(f"--since {since}: it is not this VM's latest snapshot ({t.path}); what changed is "
                           "known only since that one", "give this VM's latest snapshot to --since")


def prepare(m, snap: fmt.Snapshot, link: Optional[Link], track: bool) -> None:
    """Give ``snap`` (just taken of the paused machine ``m``) its chain
    link, and for an incremental one the chunks that changed. A full
    snapshot (``link`` None) starts the tracking when ``track``."""
    t = tracker_of(m)
    if link is not None:
        if t is None or t.head != link.head_sha256:  # check_base passed before the pause: another snapshot came first
            raise UsageProblem("another snapshot of this VM was written meanwhile; the dirty log is relative to it",
                               "give this VM's latest snapshot to --since")
        changed: Dict[str, Set[int]] = {}
        for slot, pages in t.collect().items():
            changed[f"ram{slot}"] = {p * mmap.PAGESIZE // ram_image.CHUNK for p in pages}
        snap.changed = changed
        snap.manifest["chain"] = {"lineage": t.lineage, "depth": link.depth,
                                  "parent": {"path": link.name, "head_sha256": link.head_sha256}}
        return
    if track and untracked(m) is None:
        if t is None:
            t = Tracker(m)
            try:
                t.log.start()
                m.owned.append(t)
            except PyvmmError:
                t = None  # no tracking on this host: full snapshots only
        else:
            t.collect()  # kept until the file is written: a failed write loses no page
    snap.manifest["chain"] = {"lineage": t.lineage if t else os.urandom(16).hex(), "depth": 0, "parent": None}


def committed(m, snap: fmt.Snapshot, path: str) -> None:
    """``snap`` was written to ``path``: the next ``--since`` builds on it."""
    t = tracker_of(m)
    if t is not None and snap.manifest["chain"]["lineage"] == t.lineage:
        t.committed(snap, path)

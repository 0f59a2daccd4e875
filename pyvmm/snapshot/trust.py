"""Which host resources a snapshot may choose (docs/snapshot-format.md, "Trust").

A snapshot file is input from outside: whoever made or altered it chooses
every byte, and a plain checksum (the file's SHA-256) proves nothing about
who that was. Host resources -- the disk images a restored VM opens, the
kernel, initrd or firmware it boots after a guest reset -- therefore come
only from

1. the restoring user's command line (``pyvmm restore --disk PATH``,
   ``--kernel``, ...), or
2. a snapshot *sealed* by this user's own pyvmm: an HMAC-SHA-256, under a
   per-user key that only this user can read, over the whole manifest
   (which pins every blob by its SHA-256, checked again when the seal is
   relied on). A seal made with another key, a missing seal, or any
   changed byte leaves the snapshot unsealed.

An unsealed snapshot may still be restored, with its disks named on the
command line; the paths it records are never opened. The same rule holds
for the migration stream.

The key: 32 random bytes in ``$XDG_CONFIG_HOME/pyvmm/snapshot.key``
(default ``~/.config/pyvmm/snapshot.key``), created on the first snapshot
with mode 0600 in a 0700 directory. A key file that is not a regular file
owned by this user with no group or other permissions is refused, never
used: anyone who can read it can forge seals, anyone who can replace it can
make the user accept theirs.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from .._record import record
from typing import Any, Dict, Optional

from ..errors import UsageProblem

SEAL_KEY = "seal"  # the manifest key holding the seal
ALGORITHM = "hmac-sha256"
KEY_BYTES = 32
_DOMAIN = b"pyvmm snapshot seal v1\0"


class KeyError_(UsageProblem):
    """The user's snapshot key cannot be used (wrong owner, mode, type or size)."""

    exit_status = 1


def key_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "pyvmm", "snapshot.key")


def _read_key(path: str) -> Optional[bytes]:
    """The key at ``path``; None if there is none; KeyError_ if it is unsafe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise KeyError_(f"snapshot key {path}: {e.strerror}",
                        "it must be a regular file of yours (remove it: pyvmm makes a new one)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyError_(f"snapshot key {path} is not a regular file", "remove it: pyvmm makes a new one")
        if st.st_uid != os.geteuid():
            raise KeyError_(f"snapshot key {path} belongs to uid {st.st_uid}, not to you ({os.geteuid()})",
                            "remove it: pyvmm makes a new one")
        if st.st_mode & 0o077:
            raise KeyError_(f"snapshot key {path} has mode {stat.S_IMODE(st.st_mode):04o}: others may read or "
                            "change it", "remove it (snapshots it sealed then need --disk on restore)")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise KeyError_(f"snapshot key {path} holds {len(key)} bytes, not {KEY_BYTES}",
                        "remove it: pyvmm makes a new one")
    return key


def load_key(create: bool = False, path: Optional[str] = None) -> Optional[bytes]:
    """This user's snapshot key (made first if ``create``); None if there is
    none and ``create`` is false."""
    path = path or key_path()
    key = _read_key(path)
    if key is not None or not create:
        return key
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = os.path.join(directory, f".snapshot.key.{os.getpid()}-{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, os.urandom(KEY_BYTES))  # what secrets.token_bytes uses, without loading it
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another pyvmm made meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    except OSError as e:
        raise KeyError_(f"cannot create the snapshot key {path}: {e.strerror}",
                        "set XDG_CONFIG_HOME to a directory of yours") from None
    return _read_key(path)


def key_id(key: bytes) -> str:
    """A public name for a key (tells "sealed with another key" from "altered")."""
    return hashlib.sha256(b"pyvmm key id\0" + key).hexdigest()[:16]


def _mac(key: bytes, manifest: Dict) -> str:
    body = {k: v for k, v in manifest.items() if k != SEAL_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return hmac.new(key, _DOMAIN + text, hashlib.sha256).hexdigest()


def seal(manifest: Dict, key: bytes) -> None:
    """Add the seal to a finished manifest (its blob table filled in)."""
    manifest[SEAL_KEY] = {"alg": ALGORITHM, "key_id": key_id(key), "mac": _mac(key, manifest)}


def sealer(create: bool = True):
    """A function sealing a finished manifest with this user's key (made on
    first use), for :attr:`pyvmm.snapshot.format.Snapshot.seal`. The key is
    read now: a key that cannot be used fails the snapshot before it starts."""
    key = load_key(create=create)
    if key is None:
        return None
    return lambda manifest: seal(manifest, key)


@record
class Verdict:
    sealed: bool
    reason: str  # why not, or by whom


def verify(snap, key: Optional[bytes] = None, check_blobs: bool = True, check_ram: bool = True) -> Verdict:
    """Whether ``snap`` (a decoded :class:`~pyvmm.snapshot.format.Snapshot`)
    carries a valid seal under this user's key. With ``check_blobs``, every
    blob is hashed and compared with the (sealed) blob table: the file's own
    checksum is not keyed, so this is what binds the blobs to the seal. With
    ``check_ram`` too, a version-2 file's guest RAM is checked against the
    sealed chunk tables (CRC-32 per chunk: damage, not forgery; see
    docs/snapshot-format.md, "Version 2")."""
    manifest = snap.manifest
    s = manifest.get(SEAL_KEY)
    if s is None:
        return Verdict(False, "it carries no seal")
    if not isinstance(s, dict) or s.get("alg") != ALGORITHM or not isinstance(s.get("mac"), str):
        return Verdict(False, "its seal is malformed")
    if key is None:
        key = load_key(create=False)
    if key is None:
        return Verdict(False, f"you have no snapshot key ({key_path()}), so no seal of yours")
    if s.get("key_id") != key_id(key):
        return Verdict(False, "it was sealed with another user's or host's key")
    try:
        expected = _mac(key, manifest)
    except (TypeError, ValueError, RecursionError):
        return Verdict(False, "its manifest cannot be sealed (not canonical JSON)")
    if not hmac.compare_digest(expected.encode(), s["mac"].encode("utf-8", "replace")):
        return Verdict(False, "its seal does not match its contents: it was altered")
    if check_blobs:
        table = manifest.get("blobs")
        names = {e.get("name") for e in table if isinstance(e, dict)} if isinstance(table, list) else set()
        images = set(snap.ram_images()) if hasattr(snap, "ram_images") else set()
        if not isinstance(table, list) or names | images != set(snap.blobs):
            return Verdict(False, "its blob table does not list its blobs")
        for entry in table:
            blob = snap.blobs[entry["name"]]
            if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
                return Verdict(False, f"blob {entry['name']!r} does not match its sealed SHA-256: it was altered")
        # Version 2: guest RAM is bound to the sealed chunk tables by CRC-32
        # (docs/snapshot-format.md, "Version 2": what that does and does not prove).
        bad = snap.verify_ram() if check_ram and images and not snap.ram_checked else None
        if bad:
            return Verdict(False, bad)
    return Verdict(True, "sealed with your key")


@record
class HostChoice:
    """Host resources the restoring user named on the command line (None:
    not given). ``disks`` replaces the snapshot's disks one for one, in order."""
    disks: Optional[list] = None
    kernel: Optional[str] = None
    initrd: Optional[str] = None
    firmware: Optional[str] = None

    @property
    def boot_given(self) -> bool:
        return bool(self.kernel or self.firmware)


def choose_resources(config, snap, given: Optional[HostChoice] = None, key: Optional[bytes] = None):
    """The restored machine's configuration with its host resources chosen
    by the rule above: from ``given``, else from a snapshot sealed with this
    user's key, else none (disks: refused with what to do; the reboot
    payload: dropped, so a guest reset ends the VM with the reason).
    ``config`` is the snapshot's (a MachineConfig); a changed copy is returned."""
    from .._record import replace

    given = given or HostChoice()
    recorded_disks = list(config.disks)
    changes: Dict[str, Any] = {}
    if given.disks is not None:
        if len(given.disks) != len(recorded_disks):
            raise UsageProblem(f"--disk given {len(given.disks)} times; the snapshot has {len(recorded_disks)} "
                               "disks", "give --disk once per disk of the snapshot, in order (pyvmm inspect "
                               "SNAP lists them)")
        changes["disks"] = list(given.disks)
    if given.boot_given:
        changes.update(kernel=given.kernel, initrd=given.initrd, firmware=given.firmware)
    need_disks = given.disks is None and bool(recorded_disks)
    need_boot = not given.boot_given and bool(config.kernel or config.firmware or config.initrd)
    if need_disks or need_boot:
        # Guest RAM is checked first only when the seal decides which disks the guest gets:
        # a reboot payload alone (the user's own kernel, named under the seal) waits for
        # the check that runs while the guest does (docs/snapshot-format.md, "Version 2").
        verdict = verify(snap, key, check_ram=need_disks)
        if not verdict.sealed:
            if need_disks:
                names = ", ".join(str(d.path) for d in recorded_disks)
                raise UsageProblem(f"the snapshot names {len(recorded_disks)} disk(s) ({names}), and {verdict.reason}: "
                                   "pyvmm opens no host file an unsealed snapshot names",
                                   "give each disk yourself: pyvmm restore SNAP --disk PATH[,ro] "
                                   "(once per disk, in order)")
            changes.update(kernel=None, initrd=None, firmware=None)
    return replace(config, **changes)

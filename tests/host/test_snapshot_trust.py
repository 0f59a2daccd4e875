"""Issue 14 #1: a snapshot never chooses host files. The trust model of
pyvmm/snapshot/trust.py: host resources come from the restoring user's
command line or from a snapshot sealed (keyed MAC) with this user's key."""
import hashlib
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pyvmm import hostinfo
from pyvmm.errors import UsageProblem
from pyvmm.machine import DiskSpec, MachineConfig
from pyvmm.snapshot import format as fmt
from pyvmm.snapshot import machine_snapshot as ms
from pyvmm.snapshot import trust
from support.snapshots import machine_snapshot

MiB = 1 << 20


class FakeKvm:
    """A stand-in KVM handle (check() refuses before it would use KVM)."""
    path = "/dev/kvm"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A private config directory per test (the key lives there) and a fixed CNTFRQ."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(hostinfo, "cntfrq", lambda kvm=None: 62_500_000)
    return tmp_path


@pytest.fixture
def victim(tmp_path):
    """A regular file of the restoring user that a crafted snapshot wants as its disk."""
    path = tmp_path / "precious.txt"
    path.write_bytes(b"my notes\n" * 1000)
    return path


def _machine_snapshot(disks, kernel="/k/Image", seal=True):
    config = MachineConfig(kernel=kernel, cmdline="quiet", mem=256 * MiB, cpus=1, disks=disks)
    snap = machine_snapshot(config, seal=trust.sealer() if seal else None)
    return fmt.encode(fmt.Snapshot(snap.manifest, {k: bytes(v) for k, v in snap.blobs.items()},
                                   seal=trust.sealer() if seal else None))


def _reencode(data: bytes, change) -> bytes:
    """What an attacker can do: change the manifest (keeping any seal it
    carries) and write a file with a valid whole-file checksum."""
    snap = fmt.decode(data)
    change(snap.manifest)
    return fmt.encode(fmt.Snapshot(snap.manifest, {k: bytes(v) for k, v in snap.blobs.items()}))


def _refix_digest(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


# -- the key ---------------------------------------------------------------------

def test_key_is_made_private_once_and_reused(home):
    key = trust.load_key(create=True)
    path = trust.key_path()
    assert path == str(home / "config" / "pyvmm" / "snapshot.key")
    assert len(key) == 32 and trust.load_key() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert [n for n in os.listdir(os.path.dirname(path))] == ["snapshot.key"]


@pytest.mark.parametrize("damage,match", [
    (lambda p: os.chmod(p, 0o644), r"has mode 0644: others may read or change it"),
    (lambda p: open(p, "ab").write(b"x"), r"holds 33 bytes, not 32"),
    (lambda p: (os.replace(p, p + ".real"), os.symlink(p + ".real", p)), r"snapshot key .*: "),
])
def test_an_unsafe_key_is_refused_not_used(damage, match):
    trust.load_key(create=True)
    damage(trust.key_path())
    with pytest.raises(trust.KeyError_, match=match):
        trust.load_key()
    with pytest.raises(trust.KeyError_):
        trust.sealer()  # a snapshot fails rather than being sealed with it


def test_no_key_means_no_seal_of_yours():
    data = _machine_snapshot([], seal=False)
    v = trust.verify(fmt.decode(data))
    assert not v.sealed and v.reason == "it carries no seal"


# -- seals -----------------------------------------------------------------------

def test_own_seal_verifies_and_any_change_breaks_it(victim):
    data = _machine_snapshot([DiskSpec(str(victim))])
    assert trust.verify(fmt.decode(data)).sealed
    moved = _reencode(data, lambda m: m["machine"]["config"]["disks"][0].update(path="/etc/shadow"))
    v = trust.verify(fmt.decode(moved))
    assert not v.sealed and v.reason == "its seal does not match its contents: it was altered"


def test_a_seal_spliced_onto_other_memory_is_refused(victim):
    """The attacker keeps a sealed manifest (copied from one of the user's
    snapshots) but replaces guest memory with their code, then fixes the
    unkeyed whole-file checksum: the blob no longer matches its sealed hash."""
    data = _machine_snapshot([DiskSpec(str(victim))])
    body = bytearray(data[:-32])
    at = len(body) - 4096  # the last stored RAM page: its first bytes become "code"
    body[at:at + 4] = b"\x00\x00\xa0\xe3"
    crafted = _refix_digest(bytes(body))
    v = trust.verify(fmt.decode(crafted))
    assert not v.sealed and v.reason == "blob 'ram0' does not match its sealed SHA-256: it was altered"


def test_another_users_seal_is_not_yours(home, tmp_path, monkeypatch, victim):
    data = _machine_snapshot([DiskSpec(str(victim))])
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other-user"))
    trust.load_key(create=True)
    v = trust.verify(fmt.decode(data))
    assert not v.sealed and v.reason == "it was sealed with another user's or host's key"


_leaf_paths = st.sampled_from([("kind",), ("machine", "cntfrq"), ("machine", "config", "kernel"),
                               ("machine", "config", "mem"), ("machine", "config", "cmdline"),
                               ("machine", "memory", 0, "gpa"), ("machine", "config", "disks", 0, "readonly"),
                               ("machine", "config", "disks", 0, "path"), ("created_by",),
                               ("seal", "key_id"), ("seal", "mac"), ("seal", "alg")])
_values = st.one_of(st.integers(-2, 1 << 40), st.text(max_size=12), st.booleans(), st.none(),
                    st.floats(allow_nan=True), st.lists(st.integers(), max_size=2))


@given(path=_leaf_paths, value=_values)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_any_changed_field_unseals(victim, path, value):
    data = _machine_snapshot([DiskSpec(str(victim))])

    def change(m):
        node = m
        for k in path[:-1]:
            node = node[k]
        if node.get(path[-1], object()) == value and type(node.get(path[-1])) is type(value):
            node[path[-1]] = [value]  # make sure it changes
        else:
            node[path[-1]] = value

    try:
        crafted = fmt.decode(_reencode(data, change))
    except (ValueError, fmt.SnapshotError):
        return  # not encodable, or refused by the reader before any seal matters
    assert not trust.verify(crafted).sealed


# -- restore's choice of host resources ------------------------------------------------

def test_crafted_snapshot_cannot_attach_a_host_file(victim):
    """The attack of the issue: an unsealed snapshot naming a file of the
    restoring user as its read-write disk is refused before anything runs,
    saying what to do; the file is untouched."""
    before = victim.read_bytes()
    crafted = _machine_snapshot([DiskSpec(str(victim))], seal=False)
    with pytest.raises(UsageProblem) as info:
        ms.check(FakeKvm(), fmt.decode(crafted))
    assert info.value.message == (f"the snapshot names 1 disk(s) ({victim}), and it carries no seal: "
                                  "pyvmm opens no host file an unsealed snapshot names")
    assert "--disk PATH" in info.value.hint
    assert info.value.exit_status == 2
    assert victim.read_bytes() == before


def test_forged_seal_is_refused_too(victim):
    sealed = _machine_snapshot([DiskSpec("/d/mine.img")])
    crafted = _reencode(sealed, lambda m: m["machine"]["config"]["disks"][0].update(path=str(victim)))
    with pytest.raises(UsageProblem, match="its seal does not match its contents"):
        ms.check(FakeKvm(), fmt.decode(crafted))


def test_sealed_snapshot_keeps_its_resources(victim):
    config = ms.check(FakeKvm(), fmt.decode(_machine_snapshot([DiskSpec(str(victim))])))
    assert [d.path for d in config.disks] == [str(victim)] and config.kernel == "/k/Image"


def test_the_user_chooses_disks_and_kernel_on_the_command_line(tmp_path):
    mine = tmp_path / "mine.img"
    mine.write_bytes(bytes(4096))
    crafted = fmt.decode(_machine_snapshot([DiskSpec("/etc/passwd")], kernel="/etc/passwd", seal=False))
    config = ms.check(FakeKvm(), crafted, trust.HostChoice(disks=[DiskSpec(str(mine), True)]))
    assert config.disks == [DiskSpec(str(mine), True)]
    assert (config.kernel, config.initrd, config.firmware) == (None, None, None)  # a reset boots nothing
    config = ms.check(FakeKvm(), crafted, trust.HostChoice(disks=[DiskSpec(str(mine))], kernel="/my/Image"))
    assert config.kernel == "/my/Image"
    with pytest.raises(UsageProblem, match="--disk given 2 times; the snapshot has 1 disks"):
        ms.check(FakeKvm(), crafted, trust.HostChoice(disks=[DiskSpec(str(mine))] * 2))


def test_unsealed_snapshot_without_disks_restores_without_its_reboot_payload():
    config = ms.check(FakeKvm(), fmt.decode(_machine_snapshot([], kernel="/etc/passwd", seal=False)))
    assert (config.kernel, config.firmware, config.initrd) == (None, None, None)


def test_a_disk_that_is_not_a_regular_file_says_so():
    """Issue 14 #7: /dev/zero exists; it is not a regular file."""
    snap = fmt.decode(_machine_snapshot([DiskSpec("/etc/x.img")], seal=False))
    with pytest.raises(UsageProblem) as info:
        ms.check(FakeKvm(), snap, trust.HostChoice(disks=[DiskSpec("/dev/zero")]))
    assert info.value.message == "--disk /dev/zero: not a regular file"
    with pytest.raises(UsageProblem, match="^--disk /nonexistent.img: no such file$"):
        ms.check(FakeKvm(), snap, trust.HostChoice(disks=[DiskSpec("/nonexistent.img")]))

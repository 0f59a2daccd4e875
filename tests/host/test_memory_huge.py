"""Guest RAM on 2 MiB boundaries, and shared RAM in huge pages: a file on a
private huge-page tmpfs, or a memfd collapsed up front (pyvmm/memory.py):
real mappings, a real tmpfs instance and real memfds of this host."""
from __future__ import annotations

import ctypes
import errno
import os
import platform

import pytest

from pyvmm import memory
from pyvmm.memory import HUGE, HUGE_ENV, GuestMemory, collapse_fits

TMPFS_MAGIC = 0x01021994  # <linux/magic.h>
CAP_SYS_ADMIN = 21  # <linux/capability.h>

BASE = 0x4000_0000
MiB = 1 << 20


def _smaps_field(address: int, field: str) -> int:
    """``field`` (kB) of the mapping of this process that starts at ``address``."""
    found = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                found = int(head.split("-")[0], 16) == address
            elif found and head == field + ":":
                return int(line.split()[1])
    raise AssertionError(f"no mapping at {address:#x} with {field} in /proc/self/smaps")


def _collapse_expected() -> str:
    """Why this host cannot give shmem 2 MiB pages by MADV_COLLAPSE ('' if it can)."""
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    if (major, minor) < (6, 1):
        return f"this host's kernel {platform.release()} predates MADV_COLLAPSE (Linux 6.1)"
    if not os.path.exists("/sys/kernel/mm/transparent_hugepage"):
        return "this host's kernel has no transparent huge pages"
    if os.sysconf("SC_PAGE_SIZE") != 4096:
        return "2 MiB huge pages need a 4 KiB page host"
    return ""


def _tmpfs_expected() -> str:
    """Why this host cannot give pyvmm a private huge-page tmpfs ('' if it can)."""
    why = _collapse_expected()  # the same kernel and page-size needs, and then some
    if why:
        return why
    with open("/proc/self/status") as f:
        caps = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
    if not caps >> CAP_SYS_ADMIN & 1:
        return "not root (no CAP_SYS_ADMIN): fsopen of a tmpfs instance needs it"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            if "[deny]" in f.read():
                return "shmem_enabled is deny: no tmpfs mount gets huge pages"
    except OSError:
        return "this host's kernel has no huge tmpfs pages"
    return ""


def _fstatfs_type(fd: int) -> int:
    """f_type of fstatfs(fd) (the first field of struct statfs, a long on
    x86-64 and arm64; Python's os module has no fstatfs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    assert libc.fstatfs(fd, buf) == 0, os.strerror(ctypes.get_errno())
    return ctypes.c_long.from_buffer(buf).value


def _is_memfd(fd: int) -> bool:
    return os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")


def _open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def _mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


@pytest.mark.parametrize("shared", [False, True])
def test_ram_starts_on_a_2mib_boundary_and_round_trips(shared):
    mem = GuestMemory()
    r = mem.add(BASE, 6 * MiB + 4096, shared=shared)
    assert r.host_address() % HUGE == 0
    assert len(r.mm) == 6 * MiB + 4096
    mem.write(BASE + 6 * MiB, b"last page")
    assert mem.read(BASE + 6 * MiB, 9) == b"last page"
    assert bytes(mem.view(BASE + 6 * MiB, 9)) == b"last page"
    assert r.mm[6 * MiB:6 * MiB + 9] == b"last page"
    if shared:
        assert os.pread(r.fd, 9, 6 * MiB) == b"last page"  # the daemon's view of the same memory
    owner = r.owner
    mem.close()
    assert owner.closed  # unmapped at once when nothing else holds a view


def test_shared_ram_is_an_unnamed_file_on_a_private_huge_tmpfs(monkeypatch):
    """The default: a tmpfs file (not a memfd) with no name, nothing mounted
    where anyone sees it, nothing allocated up front, a 2 MiB page on the
    first touch of a 2 MiB range, the daemon's view (the fd) the same
    memory, and every fd closed again by close()."""
    why = _tmpfs_expected()
    if why:
        pytest.skip(why)
    monkeypatch.delenv(HUGE_ENV, raising=False)
    fds, mounts = _open_fds(), _mountinfo()
    mem = GuestMemory()
    r = mem.add(BASE, 8 * MiB, shared=True)
    assert _fstatfs_type(r.fd) == TMPFS_MAGIC
    assert not _is_memfd(r.fd)
    st = os.fstat(r.fd)
    assert st.st_nlink == 0 and st.st_size == 8 * MiB
    assert st.st_blocks == 0  # nothing allocated yet
    assert _mountinfo() == mounts
    mem.write(BASE + 3 * MiB + 5, b"huge")
    assert os.pread(r.fd, 4, 3 * MiB + 5) == b"huge"
    assert os.fstat(r.fd).st_blocks * 512 == 2 * MiB  # the one 2 MiB page touched
    assert _smaps_field(r.host_address(), "ShmemPmdMapped") == 2 * 1024
    mem.close()
    assert _open_fds() == fds


class FakeSyscallRefusingFsopen:
    """Stands in for pyvmm.memory._syscall: fsopen fails with EPERM, as
    without CAP_SYS_ADMIN; anything else is not expected."""

    def __init__(self):
        self.calls = []

    def __call__(self, number, *args):
        self.calls.append(number)
        if number == 430:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        raise AssertionError(f"unexpected system call {number} after fsopen failed")


@pytest.mark.parametrize("how", ["collapse", "0", "fsopen refused"])
def test_shared_ram_falls_back_to_a_memfd(monkeypatch, how):
    """PYVMM_HUGE_RAM=collapse and =0 ask for a memfd; so does a failing
    fsopen under the default (silently); all of its fds closed by close()."""
    fake = FakeSyscallRefusingFsopen()
    monkeypatch.setattr(memory, "_syscall", fake)
    if how == "fsopen refused":
        monkeypatch.delenv(HUGE_ENV, raising=False)
    else:
        monkeypatch.setenv(HUGE_ENV, how)
    fds = _open_fds()
    mem = GuestMemory()
    r = mem.add(BASE, 4 * MiB, shared=True)
    assert _is_memfd(r.fd)
    assert fake.calls == ([430] if how == "fsopen refused" else [])
    mem.write(BASE + MiB, b"memfd")
    assert os.pread(r.fd, 5, MiB) == b"memfd"
    mem.close()
    assert _open_fds() == fds


def test_shared_ram_is_collapsed_into_2mib_pages(monkeypatch):
    why = _collapse_expected()
    if why:
        pytest.skip(why)
    monkeypatch.setenv(HUGE_ENV, "collapse")
    mem = GuestMemory()
    r = mem.add(BASE, 8 * MiB, shared=True)
    assert os.fstat(r.fd).st_blocks * 512 == 8 * MiB  # allocated up front
    assert mem.read(BASE, 8 * MiB) == bytes(8 * MiB)  # and zero, though one byte was written per 2 MiB
    mem.write(BASE + 3 * MiB, b"x")
    assert _smaps_field(r.host_address(), "ShmemPmdMapped") == 8 * 1024
    mem.close()


def test_huge_ram_off_leaves_shared_ram_unallocated(monkeypatch):
    monkeypatch.setenv(HUGE_ENV, "0")
    mem = GuestMemory()
    r = mem.add(BASE, 8 * MiB, shared=True)
    assert os.fstat(r.fd).st_blocks == 0
    mem.close()


def test_close_with_a_view_still_held_keeps_its_memory_mapped():
    """close() cannot unmap RAM a device still has a view of: the view stays
    readable, and the mapping goes with the last view."""
    mem = GuestMemory()
    mem.add(BASE, 4 * MiB)
    mem.write(BASE + 100, b"held")
    view = mem.view(BASE, 4 * MiB)
    mem.close()
    assert mem.regions == []
    assert bytes(view[100:104]) == b"held"
    view.release()


def test_collapse_only_while_ram_is_at_most_half_of_available_memory():
    """Pure logic (no mapping): the up-front allocation's limit."""
    assert collapse_fits(256 * MiB, 512 * MiB)
    assert not collapse_fits(256 * MiB + 4096, 512 * MiB)
    assert not collapse_fits(8 << 30, 4 << 30)
    assert not collapse_fits(2 * MiB, None)  # MemAvailable unknown: leave it on demand

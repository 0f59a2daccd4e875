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


def _smaps():
    """(start, end, {field: text after the name}) for each mapping of this process."""
    entry = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if "-" in head and not head.endswith(":"):
                if entry is not None:
                    yield entry
                lo, hi = (int(x, 16) for x in head.split("-"))
                entry = (lo, hi, {})
            elif entry is not None:
                entry[2][head.rstrip(":")] = rest.strip()
    if entry is not None:
        yield entry


def _smaps_field(address: int, field: str) -> int:
    """``field`` (kB) of the mapping of this process that starts at ``address``."""
    for lo, _, fields in _smaps():
        if lo == address and field in fields:
            return int(fields[field].split()[0])
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


def _vm_flags(address: int) -> list:
    """The VmFlags of the mapping of this process that starts at ``address``."""
    for lo, _, fields in _smaps():
        if lo == address:
            return fields["VmFlags"].split()
    raise AssertionError(f"no mapping at {address:#x} in /proc/self/smaps")


def test_private_ram_asks_for_huge_pages():
    """MADV_HUGEPAGE on anonymous RAM: 2 MiB pages also where the host's
    transparent huge pages are "madvise" (VmFlags hg)."""
    if not os.path.exists("/sys/kernel/mm/transparent_hugepage"):
        pytest.skip("this host's kernel has no transparent huge pages")
    mem = GuestMemory()
    r = mem.add(BASE, 8 * MiB)
    assert "hg" in _vm_flags(r.host_address())
    mem.close()


def _mapped_file(tmp_path, size: int, at: int = BASE, ram: int = 8 * MiB):
    """A new GuestMemory of ``ram`` bytes with a file of ``size`` random bytes
    mapped at ``at`` and named for copying: (memory, the file's path, its bytes)."""
    path = tmp_path / "payload"
    data = os.urandom(size)
    path.write_bytes(data)
    mem = GuestMemory()
    mem.add(BASE, ram)
    with open(path, "rb") as f:
        mem.map_file(at, len(data), f.fileno(), 0)
    mem.copy_mapped_file(at, len(data))
    return mem, path, data


def _anonymous_kb(address: int, length: int) -> int:
    """Anonymous kB of this process's mappings in address+length."""
    return sum(int(fields["Anonymous"].split()[0]) for lo, hi, fields in _smaps()
               if lo < address + length and address < hi)


def _mapped_paths() -> str:
    with open("/proc/self/maps") as f:
        return f.read()


def test_a_mapped_file_is_replaced_by_a_copy_of_what_ram_holds(tmp_path):
    """prepare_copies + finish_copies: the file's mapping is gone (no line of
    /proc/self/maps names it), the range is anonymous memory holding what
    guest RAM held (the file's bytes and the guest's writes), and the file
    truncated afterwards no longer reaches it (it would be SIGBUS)."""
    mem, path, data = _mapped_file(tmp_path, 6 * MiB + 100, at=BASE + 2 * MiB, ram=16 * MiB)
    r = mem.regions[0]
    mem.write(BASE + 3 * MiB, b"written by the guest")
    assert str(path) in _mapped_paths()
    copies = mem.prepare_copies()
    assert len(copies) == 1 and str(path) in _mapped_paths()  # prepared: RAM untouched yet
    length = 6 * MiB + 4096
    assert mem.finish_copies(copies) == length
    assert str(path) not in _mapped_paths()
    assert _anonymous_kb(r.host_address() + 2 * MiB, length) == length >> 10
    os.truncate(path, 0)
    expect = bytearray(data)
    expect[MiB:MiB + 20] = b"written by the guest"
    assert mem.read(BASE + 2 * MiB, len(data)) == bytes(expect)
    assert mem.read(BASE + 2 * MiB + len(data), 4096 - 100) == bytes(4096 - 100)
    assert mem.prepare_copies() == []  # each range once
    mem.close()


def test_a_file_truncated_before_the_copy_stays_mapped(tmp_path):
    """finish_copies reads guest RAM through /proc/self/mem: a page gone with
    the file is an error there, not SIGBUS; the range is left as it was."""
    mem, path, data = _mapped_file(tmp_path, 4 * MiB)
    copies = mem.prepare_copies()
    os.truncate(path, MiB)
    assert mem.finish_copies(copies) == 0
    assert str(path) in _mapped_paths()
    assert mem.read(BASE, MiB) == data[:MiB]
    mem.close()


def test_a_stopped_preparation_copies_nothing(tmp_path):
    mem, path, data = _mapped_file(tmp_path, 4 * MiB)
    before = _mapped_paths().count("\n")
    assert mem.prepare_copies(stop=lambda: True) == []
    assert _mapped_paths().count("\n") == before  # no copy mapping left behind
    mem.close()

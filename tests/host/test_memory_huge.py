"""Guest RAM on 2 MiB boundaries, and shared RAM collapsed into huge pages
(pyvmm/memory.py): real mappings and a real memfd of this host."""
from __future__ import annotations

import os
import platform

import pytest

from pyvmm.memory import HUGE, HUGE_ENV, GuestMemory, collapse_fits

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


def test_shared_ram_is_collapsed_into_2mib_pages(monkeypatch):
    why = _collapse_expected()
    if why:
        pytest.skip(why)
    monkeypatch.delenv(HUGE_ENV, raising=False)
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

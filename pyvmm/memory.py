"""Guest RAM: host mappings registered as KVM memory slots: anonymous
private memory, or (``shared``) a shmem file mapped MAP_SHARED, whose fd a
vhost-user daemon can map to reach the guest's buffers itself.

Guest RAM starts on a 2 MiB boundary of this process's address space (the
stage-2 block size of a 4 KiB-granule host), so KVM can map it 2 MiB at a
time wherever the host backs it with a huge page: anonymous RAM on a host
whose transparent huge pages are on; shared RAM as chosen by
``PYVMM_HUGE_RAM`` in pyvmm's environment:

- unset or ``1``: an unnamed file (O_TMPFILE) on a private tmpfs instance
  mounted with ``huge=within_size`` and never attached anywhere (fsopen,
  fsconfig, fsmount; nothing appears in any mount table, and it goes with the
  file's last fd). It gets 2 MiB pages as the guest first touches it, whatever
  the host's ``shmem_enabled`` says (unless ``deny``), so nothing is allocated
  up front. Where that mount cannot be made (no CAP_SYS_ADMIN, a kernel before
  5.2 or without huge tmpfs pages), silently as ``collapse``.
- ``collapse``: a memfd collapsed into 2 MiB pages up front (MADV_COLLAPSE:
  all of it allocated and zeroed before the guest runs) while it is at most
  half of the host's available memory, else left in 4 KiB pages.
- ``0``: a memfd in 4 KiB pages faulted in on demand.

Every access from device models goes through :meth:`GuestMemory.read` /
:meth:`GuestMemory.write`, which check the whole range against guest RAM, so
a guest-supplied address or length can never reach host memory outside it.

While a migration or an incremental snapshot tracks dirty memory
(:meth:`GuestMemory.track_writes`), :meth:`GuestMemory.write` also records
the pages it wrote: KVM's dirty log only sees the guest's own stores, not
the ones pyvmm's device models make into its buffers (pyvmm/dirty_log.py
merges the two).

A file mapped over guest RAM (:meth:`GuestMemory.map_file`: the kernel and
initrd of ``pyvmm run``, for start-up time) is replaced by anonymous memory
holding the same bytes once the guest runs (:meth:`GuestMemory.copy_mapped_file`,
then :meth:`GuestMemory.prepare_copies` and :meth:`GuestMemory.finish_copies`).
Until then a page the guest only read is the file's page-cache page, and even
the pages it wrote go with the file: truncating a file (``cp`` over it does)
unmaps every page of a private mapping past the new end, copied or not (POSIX
wants SIGBUS there). The file rewritten under a running guest would change its
memory or fault it (SIGBUS in pyvmm for a device model's access).
"""
from __future__ import annotations

import mmap
import os
from . import _threads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Set

from ._record import record
from ._ffi import ffi, libc
from .errors import GuestError, HostUnsupported, UsageProblem


MAP_FIXED = 0x10  # <sys/mman.h>, the same on arm64 and x86-64 (Python's mmap module has no name for it)
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # <linux/mman.h> (Python 3.13 lacks the name)
_MADV_COLLAPSE = 25  # <linux/mman.h>, Linux 6.1+
_MADV_POPULATE_READ = 22  # <linux/mman.h>, Linux 5.14+
_MREMAP_MAYMOVE, _MREMAP_FIXED = 1, 2  # <linux/mman.h>
# Calls by number, through libc's syscall(): cffi releases the GIL for them (the
# mmap module's madvise() holds it), so the vCPU threads run on meanwhile, and glibc's
# mremap/munmap are not declared in _kvm_cdef.h. arm64 numbers from
# include/uapi/asm-generic/unistd.h, x86-64 from arch/x86/entry/syscalls/syscall_64.tbl.
_NR_COPY_CALLS = {"aarch64": (233, 216, 215), "x86_64": (28, 25, 11)}.get(os.uname().machine)
_NR_MADVISE, _NR_MREMAP, _NR_MUNMAP = _NR_COPY_CALLS or (-1, -1, -1)  # unknown: no copies are made
HUGE = 2 << 20  # the stage-2 block (and transparent huge page) size with 4 KiB pages
HUGE_ENV = "PYVMM_HUGE_RAM"
# System call numbers of the new mount API: include/uapi/asm-generic/unistd.h
# (arm64) and arch/x86/entry/syscalls/syscall_64.tbl give both the same.
_NR_FSOPEN, _NR_FSCONFIG, _NR_FSMOUNT = 430, 431, 432
_FSOPEN_CLOEXEC = _FSMOUNT_CLOEXEC = 1  # <linux/mount.h>
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 1, 6  # <linux/mount.h>, enum fsconfig_command


def huge_ram_mode() -> str:
    """How shared guest RAM gets 2 MiB pages (``PYVMM_HUGE_RAM``): "tmpfs"
    (the default: a huge-page tmpfs file, else as "collapse"), "collapse"
    (a memfd collapsed up front) or "off" (``0``: a memfd in 4 KiB pages)."""
    v = os.environ.get(HUGE_ENV, "1")
    return "off" if v == "0" else "collapse" if v == "collapse" else "tmpfs"


class GuestMemoryError(GuestError):
    """A guest-supplied address range is not (entirely) guest RAM."""


def populate_mapping(r: "Region", start: int, length: int) -> None:
    """MADV_POPULATE_WRITE of region ``r``'s page-aligned range start+length
    (offsets in the region): its pages allocated writable in one call (Linux
    5.14+; best effort, an older kernel leaves them to be faulted in)."""
    if r.owner is None:
        return
    try:
        r.owner.madvise(_MADV_POPULATE_WRITE, r.offset + start, length)
    except OSError:
        pass


@record
class Region:
    slot: int
    gpa: int
    size: int
    mm: Any  # the RAM as a buffer (cffi): slices are bytes, slice assignment writes, len is size
    fd: int = -1  # the file (tmpfs or memfd) of shared RAM, -1 for anonymous memory
    readonly: bool = False
    owner: Optional[mmap.mmap] = None  # the mapping mm lies in (2 MiB more than size, to align it)
    offset: int = 0  # where mm starts in owner

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def host_address(self) -> int:
        return int(ffi.cast("uintptr_t", ffi.from_buffer(self.mm)))


class GuestMemory:
    def __init__(self):
        self.regions: List[Region] = []
        self._written: Optional[Dict[int, Set[int]]] = None  # slot -> page indices, while tracking
        self._written_lock = _threads.Lock()
        self._last: Optional[Region] = None  # the region _find found last (one-region fast path)
        self._copies: List[tuple] = []  # (region, offset, length): mapped files to replace by copies

    def add(self, gpa: int, size: int, vm=None, readonly: bool = False, shared: bool = False) -> Region:
        if size <= 0 or size % mmap.PAGESIZE or gpa % mmap.PAGESIZE:
            raise UsageProblem(f"guest RAM at {gpa:#x} size {size:#x} must be page aligned and non-empty")
        for r in self.regions:
            if gpa < r.end and r.gpa < gpa + size:
                raise UsageProblem(f"guest RAM at {gpa:#x} overlaps the region at {r.gpa:#x}")
        fd = -1
        try:
            # anonymous, private, 2 MiB more than the RAM: RAM starts at its
            # first 2 MiB boundary; the rest is never touched (costs nothing)
            owner = mmap.mmap(-1, size + HUGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, OverflowError) as e:
            raise HostUnsupported(f"cannot map {size >> 20} MiB of guest RAM: "
                                  f"{getattr(e, 'strerror', None) or e}",
                                  "give the guest less memory (-m)") from None
        start = int(ffi.cast("uintptr_t", ffi.from_buffer(owner)))
        offset = -start % HUGE
        if shared:
            mode = huge_ram_mode()
            on_tmpfs = False
            if mode == "tmpfs":
                fd = huge_tmpfs_file()
                on_tmpfs = fd >= 0
            try:
                if fd < 0:
                    fd = os.memfd_create(f"pyvmm-ram-{gpa:x}", os.MFD_CLOEXEC)
                os.ftruncate(fd, size)
                got = libc().mmap(ffi.cast("void *", start + offset), size, mmap.PROT_READ | mmap.PROT_WRITE,
                                  mmap.MAP_SHARED | MAP_FIXED, fd, 0)
                if int(ffi.cast("uintptr_t", got)) != start + offset:
                    raise OSError(ffi.errno, os.strerror(ffi.errno))
            except OSError as e:
                if fd >= 0:
                    os.close(fd)
                owner.close()
                raise HostUnsupported(f"cannot map {size >> 20} MiB of shared guest RAM: {e.strerror or e}",
                                      "give the guest less memory (-m)") from None
            if on_tmpfs:
                try:  # huge=within_size needs no hint; this one asks for the PMD mappings as well
                    owner.madvise(mmap.MADV_HUGEPAGE, offset, size)
                except OSError:
                    pass
            elif mode != "off" and collapse_fits(size, _mem_available()):
                _collapse(owner, offset, size, fd)
        else:
            try:  # 2 MiB pages also on a host whose transparent huge pages are "madvise"
                owner.madvise(mmap.MADV_HUGEPAGE, offset, size)
            except OSError:
                pass
        # the buffer holds a view of owner: owner cannot be unmapped under it
        mm = ffi.buffer(ffi.from_buffer("char[]", memoryview(owner)[offset:offset + size]))
        region = Region(len(self.regions), gpa, size, mm, fd, readonly, owner, offset)
        if vm is not None:
            vm.set_user_memory_region(region.slot, gpa, size, region.host_address(),
                                      2 if readonly else 0)
        self.regions.append(region)
        return region

    def _find(self, gpa: int, length: int) -> Optional[Region]:
        if length < 0 or gpa < 0:
            return None
        r = self._last  # device queues hit the same region again and again
        if r is not None and r.gpa <= gpa and gpa + length <= r.gpa + r.size:
            return r
        for r in self.regions:
            if r.gpa <= gpa and gpa + length <= r.gpa + r.size:
                self._last = r
                return r
        return None

    def host_address(self, gpa: int, length: int) -> int:
        """The address in this process of guest range gpa+length (for a kernel
        or daemon data plane that is given ring addresses); the whole range
        must be in one region of guest RAM."""
        r = self._find(gpa, length)
        if r is None:
            raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")
        return r.host_address() + (gpa - r.gpa)

    def map_file(self, gpa: int, length: int, fd: int, offset: int) -> None:
        """Map ``length`` bytes of the file ``fd`` from ``offset`` over guest
        RAM at ``gpa``, copy-on-write (MAP_PRIVATE, MAP_FIXED): the guest
        (and KVM, which follows the host mapping) reads the file's pages on
        first touch, and its writes stay private. Only anonymous RAM can be
        mapped over: RAM shared with a vhost-user daemon is a file the
        daemon maps too (UsageProblem; read it in instead)."""
        r = self._find(gpa, length)
        if r is None:
            raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")
        if r.fd >= 0:
            raise UsageProblem("guest RAM is shared with a vhost-user daemon: it cannot be mapped from a file")
        if length <= 0 or (gpa - r.gpa) % mmap.PAGESIZE or offset % mmap.PAGESIZE:
            raise UsageProblem(f"file range {offset:#x}+{length:#x} at guest {gpa:#x} is not page aligned")
        addr = r.host_address() + (gpa - r.gpa)
        got = libc().mmap(ffi.cast("void *", addr), length, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_PRIVATE | MAP_FIXED, fd, offset)
        if int(ffi.cast("uintptr_t", got)) != addr:
            err = ffi.errno
            raise HostUnsupported(f"cannot map the snapshot's memory at guest {gpa:#x}: {os.strerror(err)}")

    # -- files mapped over RAM, replaced by copies ------------------------------
    def copy_mapped_file(self, gpa: int, length: int) -> None:
        """Have the file mapped at guest range gpa+length (by :meth:`map_file`)
        replaced by a copy in anonymous memory (:meth:`prepare_copies`,
        :meth:`finish_copies`)."""
        r = self._find(gpa, length)
        if r is None:
            raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")
        start = (gpa - r.gpa) & ~(mmap.PAGESIZE - 1)
        end = min(gpa - r.gpa + length + mmap.PAGESIZE - 1, r.size) & ~(mmap.PAGESIZE - 1)
        self._copies.append((r, start, end - start))

    @property
    def copies_pending(self) -> bool:
        return bool(self._copies) and _NR_COPY_CALLS is not None

    def prepare_copies(self, stop: Callable[[], bool] = lambda: False) -> List["Copy"]:
        """The slow half of replacing the mapped files, done while the guest
        runs on: each file read in (MADV_POPULATE_READ, Linux 5.14+) and an
        anonymous mapping of its size allocated, 2 MiB aligned, in huge pages
        where the host gives them. Hand the result to :meth:`finish_copies`
        (or :meth:`Copy.drop` each); nothing of guest RAM changes here. Empty
        where nothing is to be copied, on a host without the calls, or once
        ``stop()`` says so (asked between 2 MiB steps)."""
        copies, self._copies = self._copies, []
        if _NR_COPY_CALLS is None:
            return []
        made: List[Copy] = []
        try:
            for r, start, length in copies:
                made.append(Copy(r, start, length, stop))
        except OSError:
            for c in made:
                c.drop()
            return []
        return made

    def finish_copies(self, copies: List["Copy"]) -> int:
        """Replace each mapped file's range by its copy: the bytes guest RAM
        holds now (written pages as the guest left them) copied into the copy's
        memory, which is then moved over the range (mremap: the file's mapping
        goes, KVM follows the new pages). Only while nothing writes guest RAM:
        the vCPUs paused, device models and vhost planes held (Machine.run's
        copy thread). Returns the bytes replaced; a range that cannot be read
        whole (the file truncated meanwhile) stays mapped."""
        done = 0
        for c in copies:
            done += c.finish()
        return done

    def mappable(self, gpa: int, length: int) -> bool:
        """Whether :meth:`map_file` can map a file at ``gpa`` (a page-aligned
        range of anonymous, not shared, guest RAM)."""
        r = self._find(gpa, length)
        return r is not None and r.fd < 0 and length > 0 and (gpa - r.gpa) % mmap.PAGESIZE == 0

    def contains(self, gpa: int, length: int) -> bool:
        return self._find(gpa, length) is not None

    def read(self, gpa: int, length: int) -> bytes:
        r = self._find(gpa, length)
        if r is None:
            raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")
        off = gpa - r.gpa
        return r.mm[off:off + length]

    def populate(self, gpa: int, length: int) -> None:
        """Allocate the pages of guest range gpa+length now, writable, in one
        call (MADV_POPULATE_WRITE, Linux 5.14+), instead of one page fault
        per page while it is filled (shared RAM may be a memfd of 4 KiB pages).
        Best effort: an older kernel leaves them to be faulted in."""
        r = self._find(gpa, length)
        if r is None:
            raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")
        start = (gpa - r.gpa) & ~(mmap.PAGESIZE - 1)
        end = min(gpa - r.gpa + length + mmap.PAGESIZE - 1, r.size) & ~(mmap.PAGESIZE - 1)
        populate_mapping(r, start, end - start)

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of guest range gpa+length (in one region), for
        reading a file straight into guest RAM."""
        r = self._find(gpa, length)
        if r is None:
            raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")
        off = gpa - r.gpa
        return memoryview(r.mm)[off:off + length]

    def write(self, gpa: int, data: bytes) -> None:
        r = self._find(gpa, len(data))
        if r is None:
            raise GuestMemoryError(f"guest range {gpa:#x}+{len(data):#x} is outside guest RAM")
        off = gpa - r.gpa
        r.mm[off:off + len(data)] = data
        if self._written is not None and data:
            pages = range(off // mmap.PAGESIZE, (off + len(data) - 1) // mmap.PAGESIZE + 1)
            with self._written_lock:
                written = self._written
                if written is not None:
                    written.setdefault(r.slot, set()).update(pages)

    # -- writes by pyvmm itself, for the dirty log ------------------------------
    def track_writes(self, on: bool) -> None:
        """Start (forgetting what was recorded) or stop recording the pages
        :meth:`write` changes."""
        with self._written_lock:
            self._written = {} if on else None

    def take_written(self) -> Dict[int, Set[int]]:
        """The pages :meth:`write` changed since tracking started or the
        last call (slot -> page indices in the slot), forgotten here."""
        with self._written_lock:
            if self._written is None:
                return {}
            taken, self._written = self._written, {}
        return taken

    def close(self) -> None:
        regions, self.regions, self._last = self.regions, [], None
        for r in regions:
            owner, r.mm, r.owner = r.owner, None, None
            if owner is not None:
                try:
                    owner.close()
                except BufferError:  # a view of it is still in use: unmapped when the last one goes
                    pass
            if r.fd >= 0:
                os.close(r.fd)


class Copy:
    """One mapped file's range with its anonymous copy in the making
    (:meth:`GuestMemory.prepare_copies`)."""

    def __init__(self, r: Region, start: int, length: int, stop: Callable[[], bool]):
        assert r.owner is not None
        self.target = int(ffi.cast("uintptr_t", ffi.from_buffer(r.owner))) + r.offset + start
        self.length = length
        self.base = 0
        # the file's pages read in now (the slow part: the file may be on a network file
        # system), so the copy made while the guest is paused finds them in memory
        for off in range(0, length, HUGE):
            if stop():
                raise OSError(0, "stopped")
            _syscall(_NR_MADVISE, self.target + off, min(HUGE, length - off), _MADV_POPULATE_READ)
        got = libc().mmap(ffi.NULL, length + HUGE, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        base = int(ffi.cast("uintptr_t", got))
        if base == (1 << 64) - 1:  # MAP_FAILED
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        self.base = base
        self.copy = base + (-base % HUGE)  # where the pages to move start: 2 MiB aligned, as the target is
        for advice in (mmap.MADV_HUGEPAGE, _MADV_POPULATE_WRITE):  # huge pages, allocated before the pause
            try:
                _syscall(_NR_MADVISE, self.copy, length, advice)
            except OSError:
                pass  # best effort: 4 KiB pages, faulted in by the copy

    def finish(self) -> int:
        """Copy and move (everything quiet); the bytes replaced (0: left mapped)."""
        moved = False
        try:
            # Through /proc/self/mem rather than a memory copy: a page of the file
            # truncated under us reads as an error here, where a load would be SIGBUS.
            fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
            try:
                view = memoryview(ffi.buffer(ffi.cast("char *", self.copy), self.length))
                done = 0
                while done < self.length:
                    n = os.preadv(fd, [view[done:]], self.target + done)
                    if n <= 0:
                        return 0
                    done += n
            finally:
                os.close(fd)
            _syscall(_NR_MREMAP, self.copy, self.length, self.length, _MREMAP_MAYMOVE | _MREMAP_FIXED, self.target)
            moved = True
        except OSError:
            return 0
        finally:
            self.drop(moved)
        return self.length

    def drop(self, moved: bool = False) -> None:
        """Unmap the copy's mapping (only what is left around the moved pages
        if they were moved: their old range may be someone else's mapping by now)."""
        base, self.base = self.base, 0
        if not base:
            return
        end = base + self.length + HUGE
        parts = ((base, self.copy), (self.copy + self.length, end)) if moved else ((base, end),)
        for lo, hi in parts:
            if hi > lo:
                try:
                    _syscall(_NR_MUNMAP, lo, hi - lo)
                except OSError:
                    pass


def _syscall(number: int, *args: Any) -> int:
    """A raw system call through libc's syscall(): its result, or OSError
    with its errno. Integer arguments are passed as longs, bytes as pointers."""
    cargs = [ffi.new("char[]", a) if isinstance(a, bytes) else ffi.cast("long", a) for a in args]
    ret = libc().syscall(ffi.cast("long", number), *cargs)
    if ret < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    return int(ret)


def huge_tmpfs_file() -> int:
    """An fd of a new, empty, unnamed file (O_TMPFILE, st_nlink 0) on a
    private tmpfs instance with ``huge=within_size`` and no size limit
    (``size=0``, Documentation/filesystems/tmpfs.rst), mounted with fsmount
    but never attached: no mount table shows it, and the instance goes with
    the file's last fd. -1 where it cannot be made (EPERM without
    CAP_SYS_ADMIN, ENOSYS before Linux 5.2, EINVAL without huge tmpfs pages,
    any other error): the caller falls back to a memfd."""
    fds: List[int] = []
    try:
        fs = _syscall(_NR_FSOPEN, b"tmpfs", _FSOPEN_CLOEXEC)
        fds.append(fs)
        _syscall(_NR_FSCONFIG, fs, _FSCONFIG_SET_STRING, b"huge", b"within_size", 0)
        _syscall(_NR_FSCONFIG, fs, _FSCONFIG_SET_STRING, b"size", b"0", 0)
        _syscall(_NR_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, 0, 0, 0)
        mnt = _syscall(_NR_FSMOUNT, fs, _FSMOUNT_CLOEXEC, 0)
        fds.append(mnt)
        # the open file keeps the (detached) mount alive once its fd closes
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=mnt)
    except OSError:
        return -1
    finally:
        for f in fds:
            os.close(f)


def _mem_available() -> Optional[int]:
    """The host's MemAvailable in bytes (None: unknown)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return None


def collapse_fits(size: int, available: Optional[int]) -> bool:
    """Whether ``size`` bytes of shared RAM are collapsed (allocated) up
    front: only while they are at most half of the host's available memory,
    so a large guest never makes its host reclaim or kill for RAM the guest
    may never touch (it stays in 4 KiB pages, allocated on demand)."""
    return available is not None and size <= available // 2


def _collapse(owner: mmap.mmap, offset: int, size: int, fd: int) -> None:
    """Back the shared RAM (memfd ``fd``, mapped 2 MiB aligned at ``offset``
    in ``owner``) with 2 MiB pages now, so KVM maps it in 2 MiB stage-2
    blocks: shmem gets huge pages only where the host's
    shmem_enabled allows them (Debian: never), but MADV_COLLAPSE ignores
    that setting. It collapses only 2 MiB ranges with a page in them, so one
    byte is written per range first. Costs: all of the guest's RAM is
    allocated (and zeroed) here instead of when the guest first touches it.
    Best effort: a kernel without MADV_COLLAPSE, or one short of huge pages,
    leaves (some of) it in 4 KiB pages."""
    whole = size - size % HUGE
    if not whole:
        return
    try:
        for off in range(0, whole, HUGE):
            os.pwrite(fd, b"\0", off)
        owner.madvise(_MADV_COLLAPSE, offset, whole)
    except OSError:
        pass

"""Virtio-mmio registers the guest reads without an exit: a register page.

The window of every virtio-mmio slot (pyvmm.boot.layout: 32 slots of 512
bytes from VIRTIO_BASE, 16 KiB, rounded up to whole host pages) is backed by
host memory registered as a read-only KVM memory slot (KVM_MEM_READONLY).
A guest load from it is then a plain memory access, with no exit to pyvmm;
a guest store to a read-only slot still exits as KVM_EXIT_MMIO (or meets a
KVM_IOEVENTFD first) and reaches the transport's write path as before.

Each transport (:class:`pyvmm.devices.virtio_mmio.VirtioMmio`) keeps its
512 bytes equal to what a register read would return: after each register
write, before each interrupt it raises, on reset and after a restore. The
page is no guest RAM: it is not in :class:`pyvmm.memory.GuestMemory`, so
snapshots, dirty logs and migration streams never see it, and a restore
rebuilds it from the transports' state.

It is used only where KVM offers read-only slots and the VM capability
KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED (stage-2 FWB and DIC): the guest maps
the window as Device memory, while pyvmm writes it through the cache; with
FWB the stage-2 mapping forces it cacheable, so the guest sees those writes.
Elsewhere, with a host page larger than the window allows, or with
``PYVMM_VIRTIO_REGPAGE=0``, every register read exits as before.
"""
from __future__ import annotations

import mmap
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, List, Optional, Tuple

from .._ffi import const, ffi
from ..errors import KvmError

ENV = "PYVMM_VIRTIO_REGPAGE"


class RegPage:
    """One transport's register window in the page set: 32-bit stores of
    register words (one aligned store each, so the guest never reads a torn
    word) and byte stores for the configuration space. ``buf`` is any
    writable buffer of the window's size (a slice of the mapping, or a
    bytearray in tests)."""

    def __init__(self, buf):
        self.buf = buf
        self._words: Any = ffi.from_buffer("uint32_t[]", buf)
        self._bytes: Any = ffi.from_buffer("uint8_t[]", buf)

    def put_word(self, offset: int, value: int) -> None:
        words = self._words
        if words is not None:
            words[offset >> 2] = value & 0xFFFFFFFF

    def put_bytes(self, offset: int, data: bytes) -> None:
        view = self._bytes
        if view is not None:
            view[offset:offset + len(data)] = data

    def contents(self) -> bytes:
        return bytes(self.buf) if self._words is not None else b""

    def release(self) -> None:
        """Let go of the buffer (the mapping is about to be closed); later stores do nothing."""
        words, view, self._words, self._bytes = self._words, self._bytes, None, None
        if words is not None:
            ffi.release(words)
            ffi.release(view)
        if isinstance(self.buf, memoryview):
            self.buf.release()


def window_size(span: int, page: int = mmap.PAGESIZE) -> int:
    """``span`` bytes rounded up to whole host pages."""
    return -(-span // page) * page


def unavailable(kvm, vm, base: int, page: int = mmap.PAGESIZE) -> Optional[str]:
    """Why register pages cannot be used on this VM (None: they can)."""
    if os.environ.get(ENV, "1") == "0":
        return f"{ENV}=0"
    if base % page:
        return f"the virtio-mmio window at {base:#x} is not aligned to the {page >> 10} KiB host page"
    if kvm.check_extension(const("KVM_CAP_READONLY_MEM")) <= 0:
        return "KVM offers no read-only memory slots (KVM_CAP_READONLY_MEM)"
    try:
        cacheable = vm.check_extension(const("KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED"))
    except KvmError as e:
        return f"KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED could not be checked on the VM: {e}"
    if cacheable <= 0:
        return ("KVM does not offer KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED (no stage-2 FWB and DIC): "
                "the guest's Device mapping of the window would not see pyvmm's writes")
    if kvm.check_extension(const("KVM_CAP_NR_MEMSLOTS")) < 2:
        return "KVM offers no spare memory slot"
    return None


class RegPageSet:
    """The host mapping behind the whole virtio-mmio window at ``base``
    (``span`` bytes, rounded up to host pages) and its read-only memory
    slot, the highest one KVM offers (guest RAM counts up from 0)."""

    def __init__(self, kvm, vm, base: int, span: int):
        self.base, self.size = base, window_size(span)
        self.slot = kvm.check_extension(const("KVM_CAP_NR_MEMSLOTS")) - 1
        self._vm = None
        self._pages: List[RegPage] = []
        self.mm: Optional[mmap.mmap] = mmap.mmap(-1, self.size)  # shared anonymous, zero-filled
        try:
            addr = int(ffi.cast("uintptr_t", ffi.from_buffer(self.mm)))
            vm.set_user_memory_region(self.slot, base, self.size, addr, const("KVM_MEM_READONLY"))
        except BaseException:
            self.mm.close()
            self.mm = None
            raise
        self._vm = vm

    def page(self, base: int, size: int) -> RegPage:
        """The window of the transport at ``base`` (``size`` bytes)."""
        off = base - self.base
        if self.mm is None or not 0 <= off <= self.size - size:
            raise ValueError(f"{base:#x}+{size:#x} is outside the register page set at {self.base:#x}")
        page = RegPage(memoryview(self.mm)[off:off + size])
        self._pages.append(page)
        return page

    def close(self) -> None:
        """Remove the slot (if the VM is still open) and unmap the pages."""
        vm, self._vm = self._vm, None
        if vm is not None and vm.fd >= 0:
            try:
                vm.set_user_memory_region(self.slot, self.base, 0, 0, 0)
            except (KvmError, OSError):
                pass  # closing the VM drops it anyway
        for p in self._pages:
            p.release()
        self._pages = []
        if self.mm is not None:
            self.mm.close()
            self.mm = None


def open_set(kvm, vm, base: int, span: int) -> Tuple[Optional[RegPageSet], Optional[str]]:
    """The register page set for the window, or None and why not."""
    why = unavailable(kvm, vm, base)
    if why is not None:
        return None, why
    try:
        return RegPageSet(kvm, vm, base, span), None
    except (KvmError, OSError) as e:
        return None, f"the read-only memory slot could not be set up: {e}"

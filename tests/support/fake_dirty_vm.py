"""A fake VM fd for the dirty log's pure logic (tests/host/test_dirty_log.py):
it records memory-slot flag changes and answers KVM_GET_DIRTY_LOG /
KVM_CLEAR_DIRTY_LOG from a set of "guest-written" pages per slot, as the
kernel's dirty bitmap would (a page reported stays reported until cleared
when manual protection is on, and is forgotten on GET otherwise). A fake
for pure logic: real dirty logging is tested in the test machine."""
from pyvmm import dirty_log
from pyvmm._ffi import const


class FakeDirtyVm:
    def __init__(self, manual: bool = True):
        self.offer_manual = manual
        self.manual = False
        self.flags = {}  # slot -> flags
        self.guest_written = {}  # slot -> set of pages
        self.calls = []

    def check_extension(self, cap):
        return 1 if cap == const("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2") and self.offer_manual else 0

    def enable_cap(self, cap, *args, flags=0):
        assert cap == const("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2") and args == (1,)
        self.manual = True

    def set_user_memory_region(self, slot, gpa, size, addr, flags=0):
        self.flags[slot] = flags
        self.calls.append(("region", slot, flags))

    def guest_writes(self, slot, *pages):
        if self.flags.get(slot, 0) & const("KVM_MEM_LOG_DIRTY_PAGES"):
            self.guest_written.setdefault(slot, set()).update(pages)

    def get_dirty_log(self, slot, bitmap):
        assert self.flags[slot] & const("KVM_MEM_LOG_DIRTY_PAGES"), "GET_DIRTY_LOG on a slot that does not log"
        pages = self.guest_written.get(slot, set())
        npages = len(bitmap) * 8
        bm = dirty_log.pages_bitmap(pages, npages)
        bitmap[:] = bm
        self.calls.append(("get", slot))
        if not self.manual:
            self.guest_written[slot] = set()

    def clear_dirty_log(self, slot, first, num, bitmap):
        assert self.manual and first == 0
        cleared = set(dirty_log.bitmap_pages(bitmap, num))
        self.guest_written[slot] = self.guest_written.get(slot, set()) - cleared
        self.calls.append(("clear", slot, len(cleared)))

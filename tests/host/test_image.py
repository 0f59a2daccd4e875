"""arm64 Image header checks and RAM placement (pure; no KVM)."""
import gzip
import os

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.boot import image, layout
from pyvmm.errors import UsageProblem
from support.image import make_image


def test_valid_image():
    h = image.parse_header(make_image())
    assert h.text_offset == 0 and h.image_size == 4 << 20 and h.page_size == 4096 and not h.big_endian


def test_legacy_image_size_zero_means_text_offset_0x80000():
    h = image.parse_header(make_image(text_offset=0, image_size=0, pe=False))
    assert h.text_offset == 0x80000


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (make_image()[:40], "truncated"),
    (make_image()[:3000], "truncated"),
    (gzip.compress(make_image()), "gzip-compressed"),
    (b"\xfd7zXZ\x00" + bytes(100), "xz-compressed"),
    (b"MZ\0\0zimg" + bytes(16) + b"gzip\0\0\0\0" + bytes(100), "EFI zboot gzip-compressed"),
    (bytes(0x1FE) + b"\x55\xaa" + b"\xeb\x66HdrS" + bytes(100), "x86 bzImage"),
    (make_image(magic=0x12345678), "bad magic"),
    (make_image(flags=0b1011), "big-endian"),
    (make_image(text_offset=0x123), "text_offset"),
    (make_image(image_size=100), "larger than the image_size"),
])
def test_refusals_say_why(data, reason):
    with pytest.raises(image.ImageError) as e:
        image.parse_header(data, "kernel k")
    assert reason in str(e.value)
    assert isinstance(e.value, UsageProblem) and e.value.exit_status == 2


def test_read_file_missing(tmp_path):
    with pytest.raises(image.ImageError, match="no such file"):
        image.read_file(str(tmp_path / "nope"), "kernel")
    with pytest.raises(image.ImageError, match="is a directory"):
        image.read_file(str(tmp_path), "kernel")


@pytest.mark.parametrize("text,expected", [("512M", 512 << 20), ("2G", 2 << 30), ("1024", 1 << 30),
                                           ("64MiB", 64 << 20), ("65536K", 64 << 20)])
def test_parse_size(text, expected):
    assert layout.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "1.5G", "-1M", "12Q"])
def test_parse_size_refuses(text):
    with pytest.raises(UsageProblem):
        layout.parse_size(text)


def test_ram_limits():
    with pytest.raises(UsageProblem, match="too small"):
        layout.check_ram(1 << 20)
    with pytest.raises(UsageProblem, match="does not fit"):
        layout.check_ram(2 << 40)
    with pytest.raises(UsageProblem, match="multiple of 2 MiB"):
        layout.check_ram((64 << 20) + 4096)


def test_initrd_larger_than_ram():
    with pytest.raises(UsageProblem, match="larger than RAM"):
        layout.plan(64 << 20, 8 << 20, 0, 65 << 20, True)


def test_kernel_too_big_for_ram():
    with pytest.raises(UsageProblem, match="too small"):
        layout.plan(16 << 20, 50 << 20)


def test_memory_map_regions_do_not_overlap():
    regions = [(layout.GICD_BASE, layout.GICD_SIZE), (layout.GICR_BASE, layout.GICR_REGION_SIZE),
               (layout.UART_BASE, layout.UART_SIZE),
               (layout.VIRTIO_BASE, layout.VIRTIO_SLOTS * layout.VIRTIO_SLOT_SIZE),
               (layout.RAM_BASE, layout.RAM_MAX)]
    for i, (a, alen) in enumerate(regions):
        for b, blen in regions[i + 1:]:
            assert a + alen <= b or b + blen <= a
    assert layout.MAX_VCPUS == 123


@settings(max_examples=2000, deadline=None)
@given(ram_mib=st.integers(16, 64 * 1024).map(lambda m: m - m % 2),
       kernel=st.integers(1, 128 << 20), text_offset=st.sampled_from([0, 0x80000, 0x1000]),
       initrd=st.one_of(st.none(), st.integers(1, 256 << 20)))
def test_plan_places_everything_inside_ram_without_overlap(ram_mib, kernel, text_offset, initrd):
    ram = ram_mib << 20
    try:
        p = layout.plan(ram, kernel, text_offset, initrd or 0, initrd is not None)
    except UsageProblem:
        # refused only when it really does not fit
        assert text_offset + kernel + (initrd or 0) + layout.DTB_MAX > ram - layout.INITRD_ALIGN or ram_mib < 16
        return
    end = layout.RAM_BASE + ram
    spans = [(p.kernel_addr, kernel), (p.dtb_addr, layout.DTB_MAX)]
    if initrd is not None:
        spans.append((p.initrd_addr, initrd))
        assert p.initrd_addr % layout.INITRD_ALIGN == 0
        assert p.initrd_addr + initrd <= layout.RAM_BASE + layout.INITRD_WINDOW
    for a, n in spans:
        assert layout.RAM_BASE <= a and a + n <= end
    for i, (a, alen) in enumerate(spans):
        for b, blen in spans[i + 1:]:
            assert a + alen <= b or b + blen <= a
    assert (p.kernel_addr - text_offset) % (2 << 20) == 0
    assert p.dtb_addr % 8 == 0


def test_kernel_initrd_and_dtb_placed_as_qemu_places_them():
    # QEMU (hw/arm/boot.c): initrd at RAM base + min(RAM/2, 128 MiB), above the kernel; DTB at
    # the next 2 MiB boundary after the initrd. A 128 MiB guest's free RAM is then split into
    # windows smaller than the 64 MiB CMA area Debian's kernel asks for (issue 13, item 6).
    for mib, offset in ((128, 64 << 20), (256, 128 << 20), (2048, 128 << 20)):
        p = layout.plan(mib << 20, 30 << 20, 0, (5 << 20) + 123, True)
        assert p.initrd_addr == layout.RAM_BASE + offset
        assert p.dtb_addr == layout.RAM_BASE + offset + (6 << 20)
    p = layout.plan(128 << 20, 30 << 20, 0, (5 << 20) + 123, True)
    free = [p.initrd_addr - (p.kernel_addr + p.kernel_size), layout.RAM_BASE + (128 << 20) - (p.dtb_addr + layout.DTB_MAX)]
    assert max(free) < 64 << 20
    # a kernel reaching past the middle of RAM pushes the initrd above it
    p = layout.plan(128 << 20, 70 << 20, 0, 4 << 20, True)
    assert p.initrd_addr == layout.RAM_BASE + (70 << 20)
    # no room for QEMU's placement: initrd and DTB at the top, as before
    p = layout.plan(128 << 20, 30 << 20, 0, 80 << 20, True)
    assert p.dtb_addr == layout.RAM_BASE + (126 << 20) and p.initrd_addr + (80 << 20) <= p.dtb_addr
    # firmware: the DTB in the top 2 MiB
    assert layout.plan(128 << 20, 4096, what="firmware").dtb_addr == layout.RAM_BASE + (126 << 20)


def test_the_kernel_is_mapped_copy_on_write_or_read_into_shared_ram(tmp_path):
    """Payload.load_into maps the kernel file over anonymous guest RAM (start-up
    does not read it first) and reads it into RAM shared with a vhost-user
    daemon; either way guest RAM holds the file, and guest writes never reach it.
    A mapped file is copied into RAM of its own: later changes to it never reach the guest."""
    import mmap
    import random

    from pyvmm.machine import MachineConfig
    from pyvmm.machine.config import prepare
    from pyvmm.memory import GuestMemory
    from support.image import make_image

    body = 3 * (1 << 20) + 123  # not a page multiple: the mapped last page is zero past the end
    data = bytearray(make_image(body=body))
    data[4096:] = random.Random(3).randbytes(body - 4096)
    kernel = tmp_path / "Image"
    kernel.write_bytes(bytes(data))
    payload = prepare(MachineConfig(kernel=str(kernel), mem=64 << 20))
    addr = payload.plan.kernel_addr
    for shared in (False, True):
        mem = GuestMemory()
        mem.add(layout.RAM_BASE, 64 << 20, shared=shared)
        mem.regions[0].mm[addr - layout.RAM_BASE + body:addr - layout.RAM_BASE + body + 8] = b"stale!!!"
        payload.load_into(mem, addr)
        assert mem.read(addr, body) == bytes(data)
        page_end = -(-body // mmap.PAGESIZE) * mmap.PAGESIZE
        if not shared:  # mapped: the file's last page, zero past its end (what was in RAM there is gone)
            assert mem.read(addr + body, page_end - body) == bytes(page_end - body)
        mem.write(addr + 8192, b"guest writes here")
        assert kernel.read_bytes() == bytes(data)
        if not shared:
            # once replaced by a copy (Machine.run has it made), the file changed in place
            # or truncated no longer reaches guest RAM (unwritten pages or written ones)
            assert mem.finish_copies(mem.prepare_copies()) == page_end
            with open(kernel, "r+b") as f:
                f.seek(1 << 20)
                f.write(b"rebuilt in place" * 256)
            os.truncate(kernel, 4096)  # what cp over it does first
            expect = bytearray(data)
            expect[8192:8192 + 17] = b"guest writes here"
            assert mem.read(addr, body) == bytes(expect)
            kernel.write_bytes(bytes(data))
        mem.close()
    kernel.write_bytes(bytes(data) + b"more")
    mem = GuestMemory()
    mem.add(layout.RAM_BASE, 64 << 20)
    with pytest.raises(UsageProblem, match="changed size while loading"):
        payload.load_into(mem, addr)
    mem.close()


def test_the_initrd_is_checked_by_prepare_and_loaded_like_the_kernel(tmp_path):
    """prepare opens the initrd (its errors before any VM) but does not read it:
    the payload keeps its path and size, and Payload.load_initrd maps it over
    anonymous RAM or reads it into shared RAM, as the kernel is (start-up time)."""
    import random

    from pyvmm.machine import MachineConfig
    from pyvmm.machine.config import prepare
    from pyvmm.memory import GuestMemory
    from support.image import make_image

    kernel, initrd = tmp_path / "Image", tmp_path / "initrd"
    kernel.write_bytes(make_image())
    data = random.Random(5).randbytes((1 << 20) + 77)
    initrd.write_bytes(data)
    config = MachineConfig(kernel=str(kernel), initrd=str(initrd), mem=64 << 20)
    payload = prepare(config)
    assert (payload.initrd_path, payload.initrd_size) == (str(initrd), len(data))
    assert payload.plan.initrd_size == len(data)
    addr = payload.plan.initrd_addr
    for shared in (False, True):
        mem = GuestMemory()
        mem.add(layout.RAM_BASE, 64 << 20, shared=shared)
        payload.load_initrd(mem, addr)
        assert mem.read(addr, len(data)) == data
        mem.write(addr, b"the guest frees it")
        assert initrd.read_bytes() == data
        mem.close()
    initrd.unlink()
    mem = GuestMemory()
    mem.add(layout.RAM_BASE, 64 << 20)
    with pytest.raises(UsageProblem, match="initrd .*: no such file"):  # e.g. when a reset boots it again
        payload.load_initrd(mem, addr)
    mem.close()
    payload.close()  # the kernel prepare opened, which nothing loaded here
    with pytest.raises(UsageProblem, match="initrd .*: no such file"):
        prepare(config)
    initrd.write_bytes(b"")
    with pytest.raises(UsageProblem, match="initrd .*: the file is empty"):
        prepare(config)
    initrd.unlink()
    initrd.mkdir()
    with pytest.raises(UsageProblem, match="initrd .*: is a directory"):
        prepare(config)


def test_populate_allocates_shared_ram_up_front_and_keeps_its_contents(monkeypatch):
    """GuestMemory.populate (before the kernel is read into shared RAM left
    in 4 KiB pages, PYVMM_HUGE_RAM=0): the memfd's pages exist afterwards
    (MADV_POPULATE_WRITE, Linux 5.14+), what they held is unchanged, and a
    range outside RAM is refused."""
    import os

    from pyvmm.memory import HUGE_ENV, GuestMemory, GuestMemoryError

    monkeypatch.setenv(HUGE_ENV, "0")

    mem = GuestMemory()
    r = mem.add(layout.RAM_BASE, 16 << 20, shared=True)
    mem.write(layout.RAM_BASE + (1 << 20), b"kept")
    before = os.fstat(r.fd).st_blocks
    mem.populate(layout.RAM_BASE + 100, 8 << 20)
    assert os.fstat(r.fd).st_blocks * 512 >= (8 << 20) > before * 512
    assert mem.read(layout.RAM_BASE + (1 << 20), 4) == b"kept"
    with pytest.raises(GuestMemoryError):
        mem.populate(layout.RAM_BASE + (15 << 20), 2 << 20)
    mem.close()

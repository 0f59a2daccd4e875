"""The arm64 Linux ``Image`` header and checks of what the user asks to boot.

Layout (Documentation/arch/arm64/booting.rst, "Call the kernel image"): a
64-byte little-endian header::

    u32 code0; u32 code1; u64 text_offset; u64 image_size; u64 flags;
    u64 res2; u64 res3; u64 res4; u32 magic = "ARM\\x64"; u32 res5 (PE offset)

flags: bit 0 kernel endianness (1 = big), bits 1-2 page size (0 unspecified,
1 4K, 2 16K, 3 64K), bit 3 physical placement (0: the 2 MiB aligned base
should be as close as possible to the start of DRAM; 1: anywhere).
"image_size is zero: text_offset can be assumed to be 0x80000" (pre-3.17).

With CONFIG_EFI the Image is also a PE/COFF file (``MZ`` at 0, PE header at
res5); its section table tells how long the file must be, which catches a
truncated Image.
"""
from __future__ import annotations

import os
import _struct as struct  # struct's C core, without the struct module (start-up time)

from .._record import record
from ..errors import UsageProblem

HEADER_SIZE = 64
ARM64_MAGIC = 0x644D5241  # "ARM\x64"
MAGIC_OFFSET = 56
LEGACY_TEXT_OFFSET = 0x80000
PAGE_SIZES = {0: None, 1: 4096, 2: 16384, 3: 65536}
FLAG_BE = 1 << 0
FLAG_PLACEMENT_ANYWHERE = 1 << 3

_GZIP = b"\x1f\x8b"
_XZ = b"\xfd7zXZ\x00"
_ZSTD = b"\x28\xb5\x2f\xfd"
_BZIP2 = b"BZh"
_LZ4 = b"\x02\x21\x4c\x18"
# x86 boot protocol (Documentation/arch/x86/boot.rst): 0xAA55 at 0x1FE, "HdrS" at 0x202.
_BZ_SIG_OFFSET, _BZ_HDRS_OFFSET = 0x1FE, 0x202


class ImageError(UsageProblem):
    """The kernel (or initrd) file cannot be booted; the message says why."""


@record(frozen=True)
class ImageHeader:
    text_offset: int
    image_size: int  # bytes the kernel needs from its load address, BSS included
    flags: int
    pe_offset: int

    @property
    def page_size(self):
        return PAGE_SIZES[(self.flags >> 1) & 3]

    @property
    def big_endian(self) -> bool:
        return bool(self.flags & FLAG_BE)


def _compressed_kind(data: bytes):
    for magic, kind in ((_GZIP, "gzip"), (_XZ, "xz"), (_ZSTD, "zstd"), (_BZIP2, "bzip2"), (_LZ4, "lz4")):
        if data.startswith(magic):
            return kind
    # EFI zboot (drivers/firmware/efi/libstub/zboot-header.S): "MZ", then "zimg"
    # at offset 4 and the compression type at offset 24.
    if data[:2] == b"MZ" and data[4:8] == b"zimg":
        return "EFI zboot " + data[24:32].rstrip(b"\0").decode("ascii", "replace")
    return None


def _pe_file_end(data: bytes, pe_offset: int, what: str) -> int:
    """The end of the last section's raw data in a PE/COFF file (0 if the PE
    header is not there)."""
    if pe_offset == 0 or pe_offset + 24 > len(data) or data[pe_offset:pe_offset + 4] != b"PE\0\0":
        if pe_offset and pe_offset + 24 > len(data):
            raise ImageError(f"{what}: truncated (the PE header at {pe_offset:#x} is past the end of the "
                             f"{len(data)}-byte file)")
        return 0
    nsections, = struct.unpack_from("<H", data, pe_offset + 6)
    opt_size, = struct.unpack_from("<H", data, pe_offset + 20)
    table = pe_offset + 24 + opt_size
    if table + 40 * nsections > len(data):
        raise ImageError(f"{what}: truncated (the PE section table is past the end of the {len(data)}-byte file)")
    end = 0
    for i in range(nsections):
        raw_size, raw_ptr = struct.unpack_from("<II", data, table + 40 * i + 16)
        if raw_size:
            end = max(end, raw_ptr + raw_size)
    return end


HEAD_BYTES = 1 << 16  # enough for the header and the PE section table


def parse_header(data: bytes, what: str = "kernel", file_size=None) -> ImageHeader:
    """Check ``data`` (the Image file, or its first HEAD_BYTES when
    ``file_size`` gives the whole size) and return its header, or raise
    :class:`ImageError` saying why it cannot be booted."""
    size = len(data) if file_size is None else file_size
    if size == 0:
        raise ImageError(f"{what}: the file is empty")
    kind = _compressed_kind(data)
    if kind:
        raise ImageError(f"{what}: this is a {kind}-compressed kernel, not an arm64 Image",
                         "decompress it first, e.g. zcat vmlinuz > Image" if kind == "gzip"
                         else "decompress it first (pyvmm boots the uncompressed arm64 Image)")
    if len(data) > _BZ_HDRS_OFFSET + 4 and data[_BZ_SIG_OFFSET:_BZ_SIG_OFFSET + 2] == b"\x55\xaa" \
            and data[_BZ_HDRS_OFFSET:_BZ_HDRS_OFFSET + 4] == b"HdrS":
        raise ImageError(f"{what}: this is an x86 bzImage, not an arm64 Image",
                         "pyvmm boots arm64 kernels (arch/arm64/boot/Image)")
    if len(data) < HEADER_SIZE:
        raise ImageError(f"{what}: truncated ({len(data)} bytes, shorter than the {HEADER_SIZE}-byte "
                         "arm64 Image header)")
    (code0, code1, text_offset, image_size, flags, _r2, _r3, _r4, magic,
     pe_offset) = struct.unpack_from("<IIQQQQQQII", data, 0)
    if magic != ARM64_MAGIC:
        raise ImageError(f"{what}: not an arm64 Image (bad magic {magic:#010x} at offset {MAGIC_OFFSET}, "
                         f"expected {ARM64_MAGIC:#010x} \"ARM\\x64\")")
    hdr = ImageHeader(text_offset if image_size else LEGACY_TEXT_OFFSET, image_size, flags, pe_offset)
    if hdr.big_endian:
        raise ImageError(f"{what}: a big-endian kernel; pyvmm boots little-endian guests only")
    if hdr.text_offset % 4096 or hdr.text_offset >= 2 << 20:
        raise ImageError(f"{what}: text_offset {hdr.text_offset:#x} is not a page-aligned offset below 2 MiB")
    end = _pe_file_end(data, pe_offset, what)
    if end > size:
        raise ImageError(f"{what}: truncated ({size} bytes, its PE sections end at {end})")
    if image_size and size > image_size:
        raise ImageError(f"{what}: the file ({size} bytes) is larger than the image_size "
                         f"{image_size} its header declares")
    return hdr


def load_size(hdr: ImageHeader, file_size: int) -> int:
    """Bytes of RAM the kernel occupies from its load address."""
    return hdr.image_size if hdr.image_size else file_size


def open_file(path: str, what: str, buffering: int = -1):
    """The file opened for reading, or ImageError saying why not."""
    try:
        return open(path, "rb", buffering=buffering)
    except FileNotFoundError:
        raise ImageError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{what} {path}: is a directory") from None
    except PermissionError:
        raise ImageError(f"{what} {path}: permission denied") from None
    except OSError as e:
        raise ImageError(f"{what} {path}: {e.strerror}") from None


def read_file(path: str, what: str, limit=None) -> bytes:
    """The file's bytes (at most ``limit``), or ImageError saying why not."""
    with open_file(path, what) as f:
        try:
            return f.read() if limit is None else f.read(limit)
        except OSError as e:
            raise ImageError(f"{what} {path}: {e.strerror}") from None

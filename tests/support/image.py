"""Synthetic arm64 Image files (header, optional PE header) for the boot tests."""
import struct

from pyvmm.boot import image


def make_image(text_offset=0, image_size=4 << 20, flags=0b1010, body=4096, pe=True, magic=image.ARM64_MAGIC):
    """A synthetic Image: header, optional PE header with one section covering the file."""
    pe_off = 0x40 if pe else 0
    hdr = struct.pack("<IIQQQQQQII", 0x14000000, 0, text_offset, image_size, flags, 0, 0, 0, magic, pe_off)
    if pe:
        hdr = b"MZ" + hdr[2:]
        coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0xAA64, 1, 0, 0, 0, 0, 0)
        section = b".text\0\0\0" + struct.pack("<IIIIIIHHI", body, 0x1000, body - 0x200, 0x200, 0, 0, 0, 0, 0)
        data = hdr + coff + section
    else:
        data = hdr
    return data.ljust(body, b"\0")

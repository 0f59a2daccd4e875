"""virtio-blk on a raw host file (virtio 1.2, section 5.2): read, write,
flush, get-id, read-only. Out-of-range or misaligned requests complete with
VIRTIO_BLK_S_IOERR; a malformed chain is a driver error (device reset)."""
from __future__ import annotations

import os
import struct
from typing import Dict

from .state import StateReader
from .virtio_mmio import VIRTIO_F_VERSION_1, VirtioBackend
from .virtqueue import IO_CHUNK, VirtqueueError, iter_segments, read_segments, write_segments

DEVICE_ID = 2
SECTOR = 512
VIRTIO_BLK_F_SEG_MAX = 1 << 2
VIRTIO_BLK_F_RO = 1 << 5
VIRTIO_BLK_F_BLK_SIZE = 1 << 6
VIRTIO_BLK_F_FLUSH = 1 << 9
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20
SEG_MAX = 128
_HDR = struct.Struct("<IIQ")


class VirtioBlk(VirtioBackend):
    device_id = DEVICE_ID
    num_queues = 1
    queue_max = 256

    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self.fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size
        self.capacity = self.size // SECTOR
        self.features = (VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX
                         | VIRTIO_BLK_F_BLK_SIZE | (VIRTIO_BLK_F_RO if readonly else 0))
        self.serial = os.path.basename(path).encode()[:ID_BYTES]
        self.requests = 0

    def config_bytes(self) -> bytes:
        # struct virtio_blk_config: capacity u64, size_max u32, seg_max u32,
        # geometry (u16, u8, u8), blk_size u32
        return struct.pack("<QIIHBBI", self.capacity, 0, SEG_MAX, 0, 0, 0, SECTOR)

    def config_read(self, offset: int, length: int) -> bytes:
        return self.config_bytes()[offset:offset + length].ljust(length, b"\0")

    def queue_notify(self, transport, index: int) -> None:
        transport.serve(index, lambda chain: self._request(transport.mem, chain))

    def _request(self, mem, chain) -> int:
        if chain.readable_len < _HDR.size or chain.writable_len < 1:
            raise VirtqueueError("virtio-blk request without a header or a status byte")
        typ, _, sector = _HDR.unpack(read_segments(mem, chain.readable, 0, _HDR.size))
        # the status byte is the last writable byte
        data_in = chain.writable_len - 1
        status = S_OK
        written = 0
        self.requests += 1
        if typ == T_IN:
            status, written = self._read(mem, chain, sector, data_in)
        elif typ == T_OUT:
            status = self._write(mem, chain, sector)
        elif typ == T_FLUSH:
            try:
                os.fsync(self.fd)
            except OSError:
                status = S_IOERR
        elif typ == T_GET_ID:
            written = write_segments(mem, chain.writable, self.serial.ljust(ID_BYTES, b"\0")[:min(ID_BYTES, data_in)])
        else:
            status = S_UNSUPP
        write_segments(mem, chain.writable, bytes((status,)), data_in)
        return written + 1

    def _in_range(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and sector <= self.capacity and sector * SECTOR + length <= self.capacity * SECTOR

    # Data moves in pieces of at most IO_CHUNK bytes (a request may describe
    # up to MAX_CHAIN_BYTES): what the device holds in host memory is bounded
    # by one piece, per request and in total.

    def _read(self, mem, chain, sector, length):
        if not self._in_range(sector, length):
            return S_IOERR, 0
        pos, written = sector * SECTOR, 0
        try:
            while written < length:
                take = min(IO_CHUNK, length - written)
                data = os.pread(self.fd, take, pos + written)
                # a file that shrank under us reads as zeros
                written += write_segments(mem, chain.writable, data.ljust(take, b"\0"), written)
        except OSError:
            return S_IOERR, written
        return S_OK, written

    def _write(self, mem, chain, sector):
        length = chain.readable_len - _HDR.size
        if self.readonly or not self._in_range(sector, length):
            return S_IOERR
        pos = sector * SECTOR
        try:
            for piece in iter_segments(mem, chain.readable, _HDR.size, length):
                view, done = memoryview(piece), 0
                while done < len(piece):
                    n = os.pwrite(self.fd, view[done:], pos + done)
                    if n <= 0:
                        return S_IOERR
                    done += n
                pos += done
        except OSError:
            return S_IOERR
        return S_OK

    # -- snapshot -------------------------------------------------------------
    def save_state(self) -> Dict:
        """The disk as this device saw it (path, read-only, size in bytes) and
        the request counter. Requests complete before the notify exit
        returns, so none is ever in flight; the disk's contents are the
        file's, not the snapshot's."""
        return {"path": self.path, "readonly": self.readonly, "size": self.size, "requests": self.requests}

    def load_state(self, state: Dict) -> None:
        """Refuses a disk the guest would see differently: another size
        (capacity) or read-only changed (features). The saved path is only
        the guest-visible serial (GET_ID answers the base name it had):
        a disk restored from another file keeps that serial, and the saved
        path is never opened (host files come from the restoring user:
        pyvmm/snapshot/trust.py)."""
        r = StateReader("virtio-blk", state, ("path", "readonly", "size", "requests"))
        path, readonly = r.str("path"), r.bool("readonly")
        size, requests = r.int("size", 0, (1 << 63) - 1), r.int("requests", 0, (1 << 63) - 1)
        if size != self.size:
            raise r.fail(f"disk {self.path} is {self.size} bytes now, {size} bytes when the snapshot was taken")
        if readonly != self.readonly:
            raise r.fail(f"disk {self.path} was attached {'read-only' if readonly else 'read-write'}, "
                         f"now {'read-only' if self.readonly else 'read-write'}")
        self.serial = os.path.basename(path).encode()[:ID_BYTES]
        self.requests = requests

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

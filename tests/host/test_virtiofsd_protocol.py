"""pyvmm's vhost-user front-end against a real virtiofsd (no KVM needed): a
virtio-fs device on the transport, driven by the test driver of
tests/support/virtio_driver.py over shared RAM, sends FUSE_INIT through the request queue;
virtiofsd answers in the used ring and signals the call eventfd. Needs
Debian's virtiofsd (or PYVMM_VIRTIOFSD=path) and root (its chroot sandbox);
skipped otherwise."""
import os
import select
import struct

import pytest

from pyvmm.devices import virtio_mmio as T
from pyvmm.devices.virtio_fs import VirtioFs
from pyvmm.memory import GuestMemory
from pyvmm.vhost.virtiofsd import find_binary

from support import virtio_driver as test_virtio

pytestmark = pytest.mark.skipif(find_binary() is None or os.geteuid() != 0,
                                reason="needs virtiofsd (Debian package virtiofsd) and root")

FUSE_INIT = 26


class SharedRamDriver(test_virtio.Driver):
    def __init__(self, backend):
        self.mem = GuestMemory()
        self.mem.add(test_virtio.RAM, test_virtio.RAM_SIZE, shared=True)
        self.levels = []
        self.dev = T.VirtioMmio(0xA000000, 16, self.mem, self.levels.append, backend)
        self.next_data = test_virtio.RAM + 0x10000
        self.avail_idx = {}


def test_fuse_init_round_trip_through_virtiofsd(tmp_path):
    fs = VirtioFs.open("t", str(tmp_path))
    kicks = [os.eventfd(0) for _ in range(2)]
    call = os.eventfd(0, os.EFD_NONBLOCK)
    d = None
    try:
        fs.attach_eventfds(kicks, call)
        d = SharedRamDriver(fs)
        assert d.init(T.VIRTIO_F_VERSION_1) and d.dev.error is None
        # fuse_in_header (len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding) + fuse_init_in
        req = struct.pack("<IIQQIIIHH", 40 + 64, FUSE_INIT, 7, 0, 0, 0, 0, 0, 0) + struct.pack("<IIII", 7, 31, 0, 0)
        a, n = d.buf(req + bytes(48))
        out, size = d.buf(size=512)
        d.submit(1, [(a, n, False), (out, size, True)])
        assert select.select([call], [], [], 20)[0], "virtiofsd never signalled the call eventfd"
        idx, elems = d.used(1)
        length, error, unique = struct.unpack("<IiQ", d.mem.read(out, 16))
        major = struct.unpack("<I", d.mem.read(out + 16, 4))[0]
        assert idx == 1 and elems[0] == (0, length) and error == 0 and unique == 7 and major == 7
        d.dev.write(T.R_STATUS, bytes(4))  # reset: the rings are stopped (GET_VRING_BASE)
    finally:
        fs.close()
        for fd in kicks + [call]:
            os.close(fd)
        if d is not None:
            d.mem.close()
    assert fs.daemon.exited() is not None and fs.daemon.dir is None  # daemon and socket directory gone

"""virtio-rng, the entropy device (virtio 1.2, section 5.4): one request
queue; each driver buffer gets bytes from the host's getrandom(2). Linux
binds it as hw_random "virtio_rng.0" (/dev/hwrng)."""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Callable, Dict

from .virtio_mmio import VIRTIO_F_VERSION_1, VirtioBackend
from .virtqueue import write_segments

DEVICE_ID = 4
# At most this many bytes per request: the device may fill less than the
# buffer (5.4.6), and a guest asking for 128 MiB at once gets no more.
CHUNK_MAX = 64 * 1024


class VirtioRng(VirtioBackend):
    device_id = DEVICE_ID
    num_queues = 1
    queue_max = 64
    features = VIRTIO_F_VERSION_1

    def __init__(self, source: Callable[[int], bytes] = os.getrandom):
        self._source = source
        self.bytes_given = 0

    def queue_notify(self, transport, index: int) -> None:
        def fill(chain) -> int:
            want = min(chain.writable_len, CHUNK_MAX)
            n = write_segments(transport.mem, chain.writable, self._source(want)) if want else 0
            self.bytes_given += n
            return n
        transport.serve(index, fill)

    # -- snapshot -------------------------------------------------------------
    def save_state(self) -> Dict:
        return {"bytes_given": self.bytes_given}

    def load_state(self, state: Dict) -> None:
        from .state import StateReader  # loaded to read a state, not to run (start-up time)

        r = StateReader("virtio-rng", state, ("bytes_given",))
        self.bytes_given = r.int("bytes_given", 0, (1 << 63) - 1)

"""The virtio-pci transport, modern only (virtio 1.2, 4.1), with MSI-X.

One PCI function per device: vendor 0x1AF4, device 0x1040 + the virtio
device id, revision 1 (no legacy interface). Its BAR0 (64-bit memory,
:data:`BAR_SIZE`) holds the four virtio structures its vendor capabilities
point at (4.1.4) and the MSI-X table and PBA::

    0x0000  common configuration (0x3C bytes)
    0x1000  ISR status (1 byte, read clears)
    0x2000  device configuration (the backend's config space)
    0x3000  notifications: queue n at 0x3000 + 4 * n (notify_off_multiplier 4,
            queue_notify_off = n), a KVM_IOEVENTFD each (no exit)
    0x4000  MSI-X table (one vector per queue + one for configuration changes)
    0x6000  MSI-X PBA

A fifth vendor capability (VIRTIO_PCI_CAP_PCI_CFG) reaches BAR0 through
configuration space. The registers' meaning is the virtio-mmio transport's (feature words,
status, queue set-up, the error state), so :class:`VirtioPci` is a
:class:`VirtioMmio` with other register offsets and another interrupt: each
queue and the configuration change signal their MSI-X vector
(``config_msix_vector``, ``queue_msix_vector``) through ``vectors`` (the
machine's :class:`pyvmm.machine.msi_vectors.MsiVectors`: an eventfd per
vector, a KVM_IRQFD routed as an MSI to the ITS). The guest acknowledges
nothing by register: no exit per interrupt. A vhost plane signals its
queue's vector eventfd itself (:meth:`VirtioPci.queue_call`). There is no
INTx pin: a driver without MSI-X gets no interrupt.

Saved state (:meth:`VirtioPci.save_state`, docs/snapshot-format.md): the
virtio-mmio transport's own state (registers, queues, backend) under
"transport", and the PCI side: configuration space (command, BAR, MSI-X
Enable/Function Mask), the MSI-X table, the vectors chosen for the
configuration change and each queue, and the vectors owed while masked
(the PBA). Loading it remaps BAR0 and has every vector follow its entry
(routes, irqfds); the owed messages are signalled only in
:meth:`VirtioPci.after_restore`, once the ITS is restored.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Dict, List

from .msix import CAP_ID as MSIX_CAP_ID, NO_VECTOR, Msix
from .pci import Capability, PciFunction, _put
from .virtio_mmio import (INT_CONFIG_CHANGE, INT_USED_BUFFER, R_DEVICE_FEATURES, R_DEVICE_FEATURES_SEL, R_DRIVER_FEATURES,
                          R_DRIVER_FEATURES_SEL, R_QUEUE_DESC_HIGH, R_QUEUE_DESC_LOW, R_QUEUE_DEVICE_HIGH,
                          R_QUEUE_DEVICE_LOW, R_QUEUE_DRIVER_HIGH, R_QUEUE_DRIVER_LOW, R_QUEUE_NUM,
                          R_QUEUE_READY, R_QUEUE_SEL, R_STATUS, TRIGGER_EDGE, VirtioBackend, VirtioMmio)

VENDOR = 0x1AF4
DEVICE_BASE = 0x1040  # + virtio device id (4.1.2.1)
REVISION = 1  # modern only
SUBSYSTEM_ID = 0x0040  # >= 0x40: not a transitional device
# PCI class codes by virtio device id (network controller, mass storage, ...)
CLASS_CODES = {1: 0x02_00_00, 2: 0x01_80_00, 3: 0x07_80_00, 4: 0xFF_00_00}

# The saved state's version (docs/snapshot-format.md)
STATE_VERSION = 1
_STATE_KEYS = ("transport", "config_space", "msix_table", "config_vector", "queue_vectors", "pending")

COMMON, ISR, DEVICE, NOTIFY, MSIX_TABLE, MSIX_PBA = 0x0000, 0x1000, 0x2000, 0x3000, 0x4000, 0x6000
BAR_SIZE = 0x8000
COMMON_SIZE, ISR_SIZE, DEVICE_SIZE = 0x3C, 4, 0x1000
NOTIFY_MULTIPLIER = 4

CAP_VENDOR = 0x09
CFG_COMMON, CFG_NOTIFY, CFG_ISR, CFG_DEVICE, CFG_PCI = 1, 2, 3, 4, 5

# Common configuration offsets (4.1.4.3)
(C_DEVICE_FEATURE_SELECT, C_DEVICE_FEATURE, C_DRIVER_FEATURE_SELECT, C_DRIVER_FEATURE, C_CONFIG_MSIX_VECTOR,
 C_NUM_QUEUES, C_DEVICE_STATUS, C_CONFIG_GENERATION, C_QUEUE_SELECT, C_QUEUE_SIZE, C_QUEUE_MSIX_VECTOR,
 C_QUEUE_ENABLE, C_QUEUE_NOTIFY_OFF, C_QUEUE_DESC, C_QUEUE_DRIVER, C_QUEUE_DEVICE) = (
    0x00, 0x04, 0x08, 0x0C, 0x10, 0x12, 0x14, 0x15, 0x16, 0x18, 0x1A, 0x1C, 0x1E, 0x20, 0x28, 0x30)

# Common configuration fields that mean what a virtio-mmio register means
_AS_MMIO = {C_DEVICE_FEATURE_SELECT: R_DEVICE_FEATURES_SEL, C_DRIVER_FEATURE_SELECT: R_DRIVER_FEATURES_SEL,
            C_DRIVER_FEATURE: R_DRIVER_FEATURES, C_DEVICE_STATUS: R_STATUS, C_QUEUE_SELECT: R_QUEUE_SEL,
            C_QUEUE_SIZE: R_QUEUE_NUM, C_QUEUE_ENABLE: R_QUEUE_READY,
            C_QUEUE_DESC: R_QUEUE_DESC_LOW, C_QUEUE_DESC + 4: R_QUEUE_DESC_HIGH,
            C_QUEUE_DRIVER: R_QUEUE_DRIVER_LOW, C_QUEUE_DRIVER + 4: R_QUEUE_DRIVER_HIGH,
            C_QUEUE_DEVICE: R_QUEUE_DEVICE_LOW, C_QUEUE_DEVICE + 4: R_QUEUE_DEVICE_HIGH}


def virtio_cap(cfg_type: int, offset: int, length: int, extra: bytes = b"") -> Capability:
    """A virtio vendor capability (struct virtio_pci_cap, 4.1.4) in BAR0,
    after its id and next pointer: cap_len, cfg_type, bar, id, padding, offset, length."""
    body = bytes((16 + len(extra), cfg_type, 0, 0, 0, 0)) + offset.to_bytes(4, "little") \
        + length.to_bytes(4, "little") + extra
    return Capability(CAP_VENDOR, body)


class PciCfgAccess(Capability):
    """VIRTIO_PCI_CAP_PCI_CFG (4.1.4.9): BAR0 through configuration space.
    The driver writes bar, offset and length (1, 2 or 4, offset aligned to
    it), then writes pci_cfg_data to write that many bytes of BAR0 there,
    or reads it to read them. Anything else (another BAR, another length,
    outside BAR0) moves nothing; the data field then reads as last written."""

    DATA = 2 + 14  # pci_cfg_data's offset in the capability

    def __init__(self, transport: "VirtioPci"):
        body = bytes((20, CFG_PCI, 0, 0, 0, 0)) + bytes(12)
        wmask = bytes((0, 0, 0xFF, 0, 0, 0)) + b"\xff" * 12  # bar, offset, length, data
        super().__init__(CAP_VENDOR, body, wmask)
        self.transport = transport

    def _target(self, cfg, at: int):
        bar, offset, length = cfg.cfg[at + 4], cfg.u(at + 8, 4), cfg.u(at + 12, 4)
        if bar != 0 or length not in (1, 2, 4) or offset % length or offset + length > BAR_SIZE:
            return None
        return offset, length

    def written(self, cfg, at: int, start: int, end: int) -> None:
        data = at + self.DATA
        target = self._target(cfg, at)
        if target is not None and start < data + 4 and data < end:
            offset, length = target
            self.transport.write(offset, bytes(cfg.cfg[data:data + length]))

    def before_read(self, cfg, at: int, start: int, end: int) -> None:
        data = at + self.DATA
        target = self._target(cfg, at)
        if target is not None and start < data + 4 and data < end:
            offset, length = target
            cfg.cfg[data:data + 4] = self.transport.read(offset, length).ljust(4, b"\0")


class VirtioPci(VirtioMmio):
    """``vectors``: delivers the MSI-X vectors (signal, fd, changed, pending:
    :class:`pyvmm.machine.msi_vectors.MsiVectors`, or a fake in host tests).
    ``on_bar(address)``: the guest moved BAR0 (None: not decoded)."""

    def __init__(self, mem, backend: VirtioBackend, vectors, on_bar=None):
        self.vectors = vectors
        self.msix = Msix(backend.num_queues + 1, MSIX_TABLE, MSIX_PBA, vectors.changed, vectors.pending)
        self.config_vector = NO_VECTOR
        self.queue_vectors: List[int] = [NO_VECTOR] * backend.num_queues
        caps = [virtio_cap(CFG_COMMON, COMMON, COMMON_SIZE),
                virtio_cap(CFG_NOTIFY, NOTIFY, NOTIFY_MULTIPLIER * backend.num_queues,
                           NOTIFY_MULTIPLIER.to_bytes(4, "little")),
                virtio_cap(CFG_ISR, ISR, ISR_SIZE),
                virtio_cap(CFG_DEVICE, DEVICE, DEVICE_SIZE),
                PciCfgAccess(self),
                self.msix.capability()]
        self.pci = PciFunction(VENDOR, DEVICE_BASE + backend.device_id, CLASS_CODES.get(backend.device_id, 0xFF0000),
                               REVISION, VENDOR, SUBSYSTEM_ID, BAR_SIZE, caps, on_bar)
        super().__init__(0, 0, mem, self._no_line, backend, TRIGGER_EDGE)
        self._queue_index: Dict[int, int] = {id(q): i for i, q in enumerate(self.queues)}
        self.label = "virtio-pci"  # how refusals name it (the machine puts its slot in)
        self._owed: List[int] = []  # vectors a restored state owes, signalled by after_restore()

    @staticmethod
    def _no_line(level: bool) -> None:
        """No INTx: every interrupt is an MSI-X vector (:meth:`_interrupt`)."""

    def _reset(self) -> None:
        self.config_vector = NO_VECTOR
        self.queue_vectors = [NO_VECTOR] * len(self.queue_vectors)
        super()._reset()

    def fast_reads(self) -> Dict:
        return {}

    # -- configuration space (ECAM, with the lock: MSI-X control changes vectors) ---------
    def pci_read(self, offset: int, length: int) -> bytes:
        with self.lock:
            return self.pci.read(offset, length)

    def pci_write(self, offset: int, data: bytes) -> None:
        with self.lock:
            self.pci.write(offset, data)

    # -- interrupts --------------------------------------------------------------------------
    def _signal(self, vector: int) -> None:
        if vector < self.msix.n:
            self.vectors.signal(vector)

    def _interrupt(self, bit: int) -> None:
        self.interrupt_status |= bit  # the ISR (read by no MSI-X driver, but kept as 4.1.4.5 says)
        if bit & INT_CONFIG_CHANGE:
            self._signal(self.config_vector)
        if bit & INT_USED_BUFFER:
            for v in sorted(set(self.queue_vectors)):
                self._signal(v)

    def signal_used(self, queue) -> None:
        if queue.wants_interrupt():
            self.interrupt_status |= INT_USED_BUFFER
            self._signal(self.queue_vectors[self._queue_index[id(queue)]])

    def queue_call(self, index: int, call: int) -> int:
        """The eventfd a vhost plane signals for queue ``index``: its vector's (-1: no vector)."""
        v = self.queue_vectors[index] if index < len(self.queue_vectors) else NO_VECTOR
        return self.vectors.fd(v) if v < self.msix.n else -1

    # -- snapshot ------------------------------------------------------------------------------
    isr_keeps_used = True  # the ISR is set by every interrupt and cleared only by a read (4.1.4.5)

    def state_name(self) -> str:
        return self.label

    def save_state(self) -> Dict:
        """The transport's state (:meth:`VirtioMmio.save_state`) and the PCI side."""
        from .state import b64

        with self.lock:
            return {"version": STATE_VERSION, "transport": super().save_state(),
                    "config_space": b64(self.pci.cfg), "msix_table": b64(self.msix.table),
                    "config_vector": self.config_vector, "queue_vectors": list(self.queue_vectors),
                    "pending": [v for v in range(self.msix.n) if self.vectors.pending(v)]}

    def load_state(self, state: Dict) -> None:
        """Take a :meth:`save_state` dict into this function, everything
        checked before anything changes: config space bits no guest write
        changes must be this function's, the MSI-X table's reserved bits
        clear, vectors this function has."""
        from .state import StateReader

        r = StateReader(self.label, state, _STATE_KEYS, version=STATE_VERSION)
        n = self.msix.n
        config_space = r.bytes("config_space", 1 << 12)
        table = r.bytes("msix_table", len(self.msix.table))
        for why in (self.pci.restore_refusal(config_space), self.msix.restore_refusal(table)):
            if why:
                raise r.fail(why)

        def vector(value: Any, key: str) -> int:
            if type(value) is not int or not (0 <= value < n or value == NO_VECTOR):
                raise r.fail(f"{key} must be a vector below {n} or {NO_VECTOR:#x} (none), not {str(value)[:20]}")
            return value
        config_vector = vector(r.state["config_vector"], "'config_vector'")
        queue_vectors = [vector(v, f"queue_vectors[{i}]")
                         for i, v in enumerate(r.list("queue_vectors", len(self.queue_vectors)))]
        pending = r.ints("pending", 0, n - 1)
        if any(a >= b for a, b in zip(pending, pending[1:])):
            raise r.fail(f"'pending' must be strictly increasing, not {str(pending)[:40]}")
        at = self.pci.cap_offset(MSIX_CAP_ID)
        assert at is not None  # every VirtioPci has the capability
        control = int.from_bytes(config_space[at + 2:at + 4], "little")
        with self.lock:
            super().load_state(r.dict("transport"))
            self.config_vector, self.queue_vectors = config_vector, queue_vectors
            self.msix.restore(table, control)
            self.pci.restore(config_space)  # BAR0 decoded where the guest had it
            for v in range(n):
                self.vectors.changed(v)  # routes and irqfds as the entries and masks say
            self.vectors.forget_pending()  # what an earlier load of this function owed
            self._owed = list(pending)

    def after_restore(self) -> None:
        """As :meth:`VirtioMmio.after_restore` (run once the ITS is restored);
        then the vectors the saved state owed are signalled (a masked one
        keeps it pending), and a running device signals each queue's vector
        that may deliver once: the MSI-X counterpart of the extra edge (an
        interrupt KVM had not injected when the machine was saved)."""
        super().after_restore()
        with self.lock:
            owed, self._owed = self._owed, []
            for v in owed:
                self.vectors.signal(v)
            if self.driver_ok:
                for v in sorted(set(self.queue_vectors)):
                    if self.msix.may_deliver(v):
                        self.vectors.signal(v)

    # -- BAR0 ---------------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        if length <= 0 or length > 8:
            return bytes(max(length, 0))
        with self.lock:
            if COMMON <= offset < COMMON + COMMON_SIZE:
                at = offset - COMMON
                return bytes(self._common()[at:at + length]).ljust(length, b"\0")
            if offset == ISR:  # read clears (4.1.4.5)
                value, self.interrupt_status = self.interrupt_status, 0
                return value.to_bytes(length, "little")
            if DEVICE <= offset < DEVICE + DEVICE_SIZE:
                return self.backend.config_read(offset - DEVICE, length)
            if MSIX_TABLE <= offset < MSIX_PBA:
                return self.msix.read_table(offset - MSIX_TABLE, length)
            if MSIX_PBA <= offset < BAR_SIZE:
                return self.msix.read_pba(offset - MSIX_PBA, length)
            return bytes(length)

    def _common(self) -> bytearray:
        b = bytearray(COMMON_SIZE)
        _put(b, C_DEVICE_FEATURE_SELECT, self.device_features_sel, 4)
        _put(b, C_DEVICE_FEATURE, self._read_reg(R_DEVICE_FEATURES), 4)
        _put(b, C_DRIVER_FEATURE_SELECT, self.driver_features_sel, 4)
        sel = self.driver_features_sel
        _put(b, C_DRIVER_FEATURE, self.driver_features >> (32 * sel) if sel < 2 else 0, 4)
        _put(b, C_CONFIG_MSIX_VECTOR, self.config_vector, 2)
        _put(b, C_NUM_QUEUES, len(self.queues), 2)
        _put(b, C_DEVICE_STATUS, self.status, 1)
        _put(b, C_CONFIG_GENERATION, self.config_generation, 1)
        _put(b, C_QUEUE_SELECT, self.queue_sel, 2)
        q = self._queue()
        if q is not None:
            _put(b, C_QUEUE_SIZE, q.size, 2)
            _put(b, C_QUEUE_MSIX_VECTOR, self.queue_vectors[self.queue_sel], 2)
            _put(b, C_QUEUE_ENABLE, int(q.ready), 2)
            _put(b, C_QUEUE_NOTIFY_OFF, self.queue_sel, 2)
            _put(b, C_QUEUE_DESC, q.desc_addr, 8)
            _put(b, C_QUEUE_DRIVER, q.avail_addr, 8)
            _put(b, C_QUEUE_DEVICE, q.used_addr, 8)
        return b

    def write(self, offset: int, data: bytes) -> None:
        if not 0 < len(data) <= 8:
            return
        with self.lock:
            if COMMON <= offset < COMMON + COMMON_SIZE:
                if len(data) == 8 and offset - COMMON in (C_QUEUE_DESC, C_QUEUE_DRIVER, C_QUEUE_DEVICE):
                    self._write_common(offset - COMMON, data[:4])
                    self._write_common(offset - COMMON + 4, data[4:])
                else:
                    self._write_common(offset - COMMON, data)
            elif DEVICE <= offset < DEVICE + DEVICE_SIZE:
                self.backend.config_write(offset - DEVICE, data)
            elif NOTIFY <= offset < NOTIFY + NOTIFY_MULTIPLIER * len(self.queues):
                # a notify the ioeventfd did not take (another width): the queue by address
                self.notify((offset - NOTIFY) // NOTIFY_MULTIPLIER)
            elif MSIX_TABLE <= offset < MSIX_PBA:
                self.msix.write_table(offset - MSIX_TABLE, data)

    def _write_common(self, at: int, data: bytes) -> None:
        value = int.from_bytes(data, "little")
        if at == C_CONFIG_MSIX_VECTOR:
            self.config_vector = value if value < self.msix.n else NO_VECTOR
        elif at == C_QUEUE_MSIX_VECTOR:
            if self.queue_sel < len(self.queue_vectors):
                self.queue_vectors[self.queue_sel] = value if value < self.msix.n else NO_VECTOR
        elif at == C_QUEUE_ENABLE and value == 0:
            pass  # 4.1.4.3.2: the driver MUST NOT write 0 (a queue is reset through the device)
        elif at in _AS_MMIO:
            self._write_reg(_AS_MMIO[at], value)

"""The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).

A backend (virtio_blk, virtio_console) supplies the device id, features,
config space and the queue handlers; the transport owns the registers, the
queues, the interrupt status and the error state: when a backend's queue
handling raises :class:`VirtqueueError` or touches memory outside guest RAM,
the device sets DEVICE_NEEDS_RESET, raises a configuration-change interrupt
(4.2.2.1 / 2.1.2) and ignores its queues until the driver resets it.

The interrupt is edge-triggered (what ``pyvmm run`` builds): the device tree
says edge-rising, ``raise_irq(True)`` is one edge, and nothing ever lowers a
line. Whoever signals the interrupt -- the transport for the queues Python
serves, a vhost plane for its own (straight into KVM_IRQFD, unseen by
Python) -- the driver must find its used buffers, so the used-buffer bit of
InterruptStatus reads as set whenever DRIVER_OK is (Linux's vm_interrupt
reads the status, acknowledges it and, with that bit, looks at every queue;
a queue without new used buffers costs it one index compare), and an ACK of
that bit changes nothing. The configuration-change bit is held and
acknowledged as the spec says. Level-triggered transports (the form before
edge, kept for restoring snapshots taken then: ``trigger="level"``) hold
both bits and a level that stays up until the driver acknowledges them
(docs/run.md, "Virtio interrupts").
"""
from __future__ import annotations

from .. import _threads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time; type checkers read True)
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..boot import fdt
from ..memory import GuestMemoryError
from . import virtqueue
from .virtqueue import VIRTIO_RING_F_EVENT_IDX, Virtqueue, VirtqueueError

MAGIC = 0x74726976  # "virt"
VERSION = 2
VENDOR_ID = 0x554D4551  # the id QEMU and kvmtool use ("QEMU"): Linux does not look at it

(R_MAGIC, R_VERSION, R_DEVICE_ID, R_VENDOR_ID, R_DEVICE_FEATURES, R_DEVICE_FEATURES_SEL,
 R_DRIVER_FEATURES, R_DRIVER_FEATURES_SEL, R_QUEUE_SEL, R_QUEUE_NUM_MAX, R_QUEUE_NUM,
 R_QUEUE_READY, R_QUEUE_NOTIFY, R_INTERRUPT_STATUS, R_INTERRUPT_ACK, R_STATUS,
 R_QUEUE_DESC_LOW, R_QUEUE_DESC_HIGH, R_QUEUE_DRIVER_LOW, R_QUEUE_DRIVER_HIGH,
 R_QUEUE_DEVICE_LOW, R_QUEUE_DEVICE_HIGH, R_SHM_SEL, R_SHM_LEN_LOW, R_SHM_LEN_HIGH,
 R_SHM_BASE_LOW, R_SHM_BASE_HIGH, R_QUEUE_RESET, R_CONFIG_GENERATION) = (
    0x000, 0x004, 0x008, 0x00C, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0A0, 0x0A4, 0x0AC, 0x0B0, 0x0B4, 0x0B8,
    0x0BC, 0x0C0, 0x0FC)
CONFIG = 0x100
SIZE = 0x200

# Device status bits (2.1)
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, DEVICE_NEEDS_RESET, FAILED = 1, 2, 4, 8, 64, 128
# Interrupt status bits (4.2.2)
INT_USED_BUFFER, INT_CONFIG_CHANGE = 1, 2

VIRTIO_F_VERSION_1 = 1 << 32

# What a register page (pyvmm/devices/virtio_regpage.py) must rewrite after a
# write to a register, beyond the page's default of every word: the words
# that read back what the write changed.
_QUEUE_WORDS = (R_QUEUE_NUM_MAX, R_QUEUE_NUM, R_QUEUE_READY, R_QUEUE_DESC_LOW, R_QUEUE_DESC_HIGH,
                R_QUEUE_DRIVER_LOW, R_QUEUE_DRIVER_HIGH, R_QUEUE_DEVICE_LOW, R_QUEUE_DEVICE_HIGH)
_STATUS_WORDS = (R_INTERRUPT_STATUS, R_STATUS, R_CONFIG_GENERATION)
_WORDS_AFTER_WRITE: Dict[int, Tuple[int, ...]] = {
    R_DEVICE_FEATURES_SEL: (R_DEVICE_FEATURES,),
    R_DRIVER_FEATURES: (), R_DRIVER_FEATURES_SEL: (),  # write-only: read as 0
    R_QUEUE_SEL: _QUEUE_WORDS,
    R_INTERRUPT_ACK: (R_INTERRUPT_STATUS,),
    R_QUEUE_NOTIFY: (),  # an error it causes rewrites the status words itself (fail)
    **{r: _QUEUE_WORDS + _STATUS_WORDS for r in _QUEUE_WORDS},  # activation may fail
}

# InterruptStatus as the guest reads it, by value (bits 0-1 only)
_STATUS_BYTES = tuple(v.to_bytes(4, "little") for v in range(4))

# The interrupt's trigger type, in the device tree and in saved state.
TRIGGER_EDGE, TRIGGER_LEVEL = "edge", "level"
TRIGGERS = (TRIGGER_EDGE, TRIGGER_LEVEL)
# The transport's saved-state version: 2 added "trigger" (version 1, before
# it, was always level-triggered).
STATE_VERSION = 2


def saved_trigger(state) -> str:
    """The trigger type a saved transport state (:meth:`VirtioMmio.save_state`)
    was taken with, read before a machine is built for it: "level" for a
    version-1 state, else its "trigger" field. UsageProblem for a state
    that is no JSON object, too new, or names another trigger; the rest is
    checked by :meth:`VirtioMmio.load_state`."""
    from .state import StateReader  # snapshot modules load when a state is read (start-up time)

    fields = {k: state[k] for k in ("version", "trigger") if k in state} if isinstance(state, dict) else state
    r = StateReader("virtio-mmio", fields, (), ("trigger",), version=STATE_VERSION)
    if r.version < 2:
        if r.has("trigger"):
            raise r.fail("'trigger' is no field of version 1 (always level-triggered)")
        return TRIGGER_LEVEL
    if not r.has("trigger"):
        raise r.fail(f"version {r.version} lacks 'trigger'")
    trigger = r.str("trigger")
    if trigger not in TRIGGERS:
        raise r.fail(f"'trigger' must be one of {', '.join(map(repr, TRIGGERS))}, not {trigger[:20]!r}")
    return trigger


class VirtioBackend:
    """What a virtio device type supplies. Handlers run with the transport's lock held."""

    device_id = 0
    features = VIRTIO_F_VERSION_1
    transport: Optional["VirtioMmio"] = None  # set by the transport that carries this backend
    num_queues = 1
    queue_max = 256
    # True when a data plane outside Python (vhost in the kernel, a
    # vhost-user daemon) serves the queues: it is handed the queues' kick
    # eventfds and a call eventfd (attach_eventfds) that it signals when it
    # used buffers. Edge-triggered, that is the interrupt's irqfd itself:
    # no Python runs per interrupt. Level-triggered (restored old
    # snapshots) it is an eventfd of its own that the I/O thread turns into
    # the used-buffer bit of InterruptStatus (:meth:`VirtioMmio.plane_used`):
    # a signal while the level-triggered line is still high would be lost
    # when the guest ends the interrupt, and only the transport knows to
    # raise it again.
    kernel_queues = False
    # The queues that data plane serves (the others are emulated in Python).
    served_queues: Sequence[int] = ()
    # Why a machine with this device cannot be snapshotted (None: it can).
    snapshot_refusal: Optional[str] = None

    def attach_eventfds(self, kicks: List[int], call: int, direct: bool = True) -> None:
        """The queue kick eventfds (KVM_IOEVENTFD on QueueNotify, one per
        queue) and the eventfd the plane signals for used buffers, for
        kernel_queues backends; ``direct``: that is the interrupt's irqfd
        (edge-triggered), not an eventfd the I/O thread reads."""

    def config_read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def config_write(self, offset: int, data: bytes) -> None:
        pass

    def queue_notify(self, transport: "VirtioMmio", index: int) -> None:
        pass

    def activate(self, transport: "VirtioMmio") -> None:
        pass

    def reset(self) -> None:
        pass

    def restored(self, transport: "VirtioMmio") -> None:
        """The machine was restored from a snapshot and the device, running,
        was activated again (:meth:`VirtioMmio.after_restore`): tell the
        driver what a restore changed (virtio-vsock: its connections are gone)."""

    def save_state(self) -> Dict:
        """What the backend holds beyond the transport (JSON-serialisable)."""
        return {}

    def load_state(self, state: Dict) -> None:
        """Take a state from :meth:`save_state`; UsageProblem if it does not fit."""
        from .state import StateReader

        StateReader(f"virtio device {self.device_id}", state, ())


class VirtioMmio:
    """``raise_irq(level)``: the device's interrupt. Edge-triggered
    (``trigger`` "edge", the default) only ``raise_irq(True)`` is called, one
    edge each; level-triggered, the line's changes."""

    def __init__(self, base: int, spi: int, mem, raise_irq: Callable[[bool], None], backend: VirtioBackend,
                 trigger: str = TRIGGER_EDGE):
        if trigger not in TRIGGERS:
            raise ValueError(f"interrupt trigger {trigger!r}")
        self.base, self.spi = base, spi
        self.trigger = trigger
        self.edge = trigger == TRIGGER_EDGE
        self.mem = mem
        self._raise_irq = raise_irq
        self.backend = backend
        backend.transport = self
        self.lock = _threads.RLock()
        self.queues: List[Virtqueue] = [Virtqueue(mem, backend.queue_max) for _ in range(backend.num_queues)]
        self.error: Optional[str] = None  # why the device is in its error state
        self.notifications = 0
        self._level = False
        # The register page the guest reads instead of exiting (None: every read exits)
        self.page: Optional[Any] = None
        self._reset()

    # -- the register page -------------------------------------------------------
    def attach_page(self, page) -> None:
        """Serve register reads from ``page`` (a
        :class:`pyvmm.devices.virtio_regpage.RegPage` of SIZE bytes, mapped
        read-only into the guest at this transport's base): from now on
        every change is written into it."""
        with self.lock:
            self.page = page
            self.sync_page()

    def sync_page(self) -> None:
        """Rewrite the whole register page: every register word and the
        configuration space. A backend whose configuration changes at run
        time calls this (with the lock held or not)."""
        page = self.page
        if page is None:
            return
        with self.lock:
            self._put_words(range(0, CONFIG, 4))
            page.put_bytes(CONFIG, self.backend.config_read(0, SIZE - CONFIG))

    def _put_words(self, offsets) -> None:
        page = self.page
        if page is not None:
            for off in offsets:
                page.put_word(off, self._read_reg(off))

    def _reset(self) -> None:
        self.status = 0
        self.device_features_sel = self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.interrupt_status = 0
        self.config_generation = 0
        self.error = None
        for q in self.queues:
            q.reset()
        self.backend.reset()
        self._set_level(False)
        self.sync_page()

    def _set_level(self, level: bool) -> None:
        if level != self._level and not self.edge:  # a level-triggered line: only changes matter
            self._level = level
            self._raise_irq(level)

    # -- interrupts and errors -----------------------------------------------
    def _interrupt(self, bit: int) -> None:
        """Report ``bit`` of InterruptStatus to the driver: one edge, or the
        line held up (level). The used-buffer bit is not held when
        edge-triggered (it reads as set while DRIVER_OK is)."""
        if self.edge:
            self.interrupt_status |= bit & ~INT_USED_BUFFER
        else:
            self.interrupt_status |= bit
        # The guest must find the cause in the register page when the
        # interrupt arrives; an edge for used buffers changes nothing there
        # (that bit reads set while DRIVER_OK is), so the queues' interrupts
        # cost no page write.
        if self.page is not None and not (self.edge and bit == INT_USED_BUFFER):
            self._put_words(_STATUS_WORDS)
            if virtqueue.have_fence():
                virtqueue.fence()
        if self.edge:
            self._raise_irq(True)
        else:
            self._set_level(True)

    def interrupt_status_reg(self) -> int:
        """What the driver reads from InterruptStatus."""
        if self.edge and self.status & DRIVER_OK:
            return self.interrupt_status | INT_USED_BUFFER
        return self.interrupt_status

    def fast_reads(self) -> Dict[int, Callable[[], bytes]]:
        """Registers the vCPU thread reads without the general path
        (:class:`pyvmm.devices.bus.MmioBus`): InterruptStatus, read once per
        interrupt by Linux's handler."""
        return {R_INTERRUPT_STATUS: self.interrupt_status_bytes}

    def interrupt_status_bytes(self) -> bytes:
        """InterruptStatus as 4 bytes, without taking the lock: it reads two
        ints, each whole, and any interleaving with a concurrent change is
        an order the guest could have seen with the lock (the value is what
        :meth:`interrupt_status_reg` returns)."""
        status = self.interrupt_status
        if self.edge and self.status & DRIVER_OK:
            status |= INT_USED_BUFFER
        return _STATUS_BYTES[status & 3]

    def signal_used(self, queue: Virtqueue) -> None:
        if queue.wants_interrupt():
            self._interrupt(INT_USED_BUFFER)

    def fail(self, why: str) -> None:
        """Enter the error state (2.1.1: DEVICE_NEEDS_RESET + config change)."""
        if self.error is None:
            self.error = why
            self.status |= DEVICE_NEEDS_RESET
            self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
            self._interrupt(INT_CONFIG_CHANGE)

    @property
    def driver_ok(self) -> bool:
        return bool(self.status & DRIVER_OK) and self.error is None

    def run_guarded(self, fn, *args) -> None:
        """Run backend queue code; a driver error puts the device in its error state."""
        try:
            fn(*args)
        except (VirtqueueError, GuestMemoryError) as e:
            self.fail(str(e))

    def notify(self, index: int) -> None:
        """The driver notified queue ``index`` (QueueNotify written, or the
        KVM_IOEVENTFD on it fired and the I/O thread calls this)."""
        with self.lock:
            self.notifications += 1
            if self.driver_ok and index < len(self.queues) and self.queues[index].ready:
                self.run_guarded(self.backend.queue_notify, self, index)

    def serve(self, index: int, handle: Callable[..., int]) -> None:
        """Take every available chain of queue ``index``, give each back with
        the number of bytes ``handle(chain)`` wrote into it, then one
        used-buffer interrupt for the batch."""
        q = self.queues[index]
        done = False
        while True:
            chain = q.pop()
            if chain is None:
                break
            q.push(chain.head, handle(chain))
            done = True
        if done:
            self.signal_used(q)

    def queue_call(self, index: int, call: int) -> int:
        """The eventfd a vhost plane signals for queue ``index``, given the
        device's ``call`` eventfd: that one (one interrupt for every queue;
        virtio-pci gives each queue its MSI-X vector's)."""
        return call

    def notify_all(self) -> None:
        """Serve every ready queue once: after a restore, a notify the guest
        made before the snapshot may never have been served."""
        for i in range(len(self.queues)):
            self.notify(i)

    def after_restore(self) -> None:
        """Once guest RAM is restored: a running device is activated again (a
        vhost plane is handed the queues, a tap watched) and told it was
        restored (:meth:`VirtioBackend.restored`); then every ready queue is
        served once. Edge-triggered, a running device raises one edge: a
        plane's signal KVM had not yet injected when the machine was saved
        (its irqfd work) is not in the saved vGIC; an extra edge finds at
        worst nothing new to do."""
        with self.lock:
            if self.driver_ok:
                self.backend.activate(self)
                self.run_guarded(self.backend.restored, self)
        self.notify_all()
        with self.lock:
            self.sync_page()
            if self.edge and self.status & DRIVER_OK:
                self._raise_irq(True)

    def plane_used(self) -> None:
        """The data plane of a kernel_queues backend signalled used buffers
        (level-triggered: its call eventfd, read by the I/O thread)."""
        with self.lock:
            if self.driver_ok:
                self._interrupt(INT_USED_BUFFER)

    def resample(self) -> None:
        """The guest ended its interrupt (level-triggered: KVM_IRQFD resample):
        KVM lowered the line; raise it again while the device still has
        something to report."""
        with self.lock:
            if self.interrupt_status and not self.edge:
                self._raise_irq(True)

    # -- registers ---------------------------------------------------------------
    def _queue(self):
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def read(self, offset: int, length: int) -> bytes:
        with self.lock:
            if offset == R_INTERRUPT_STATUS and length == 4:  # once per interrupt: the fast path
                return self.interrupt_status_reg().to_bytes(4, "little")
            if offset >= CONFIG:
                return self.backend.config_read(offset - CONFIG, length)
            return self._read_reg(offset).to_bytes(4, "little")[:length].ljust(length, b"\0")

    def _read_reg(self, offset: int) -> int:
        q = self._queue()
        if offset == R_MAGIC:
            return MAGIC
        if offset == R_VERSION:
            return VERSION
        if offset == R_DEVICE_ID:
            return self.backend.device_id
        if offset == R_VENDOR_ID:
            return VENDOR_ID
        if offset == R_DEVICE_FEATURES:
            return (self.backend.features >> (32 * self.device_features_sel)) & 0xFFFFFFFF \
                if self.device_features_sel < 2 else 0
        if offset == R_QUEUE_NUM_MAX:
            return q.max_size if q else 0
        if offset == R_QUEUE_READY:
            return int(q.ready) if q else 0
        if offset == R_INTERRUPT_STATUS:
            return self.interrupt_status_reg()
        if offset == R_STATUS:
            return self.status
        if offset == R_CONFIG_GENERATION:
            return self.config_generation
        if offset == R_SHM_LEN_LOW or offset == R_SHM_LEN_HIGH:
            return 0xFFFFFFFF  # no shared memory regions (4.2.2: length -1)
        if q is not None:
            for reg, attr, hi in ((R_QUEUE_DESC_LOW, "desc_addr", 0), (R_QUEUE_DESC_HIGH, "desc_addr", 1),
                                  (R_QUEUE_DRIVER_LOW, "avail_addr", 0), (R_QUEUE_DRIVER_HIGH, "avail_addr", 1),
                                  (R_QUEUE_DEVICE_LOW, "used_addr", 0), (R_QUEUE_DEVICE_HIGH, "used_addr", 1)):
                if offset == reg:
                    return (getattr(q, attr) >> (32 * hi)) & 0xFFFFFFFF
            if offset == R_QUEUE_NUM:
                return q.size
        return 0

    def write(self, offset: int, data: bytes) -> None:
        with self.lock:
            if offset >= CONFIG:
                self.backend.config_write(offset - CONFIG, data)
                self.sync_page()
                return
            value = int.from_bytes(data[:4], "little")
            self._write_reg(offset, value)
            if self.page is not None:
                words = _WORDS_AFTER_WRITE.get(offset)
                if words is None:
                    self.sync_page()
                else:
                    self._put_words(words)

    def _write_reg(self, offset: int, value: int) -> None:
        q = self._queue()
        if offset == R_DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == R_DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == R_DRIVER_FEATURES:
            if self.driver_features_sel < 2 and not self.status & FEATURES_OK:
                shift = 32 * self.driver_features_sel
                self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
        elif offset == R_QUEUE_SEL:
            self.queue_sel = value
        elif offset == R_INTERRUPT_ACK:
            self.interrupt_status &= ~value
            if self.interrupt_status == 0:
                self._set_level(False)
        elif offset == R_STATUS:
            self._write_status(value)
        elif offset == R_QUEUE_NOTIFY:
            self.notify(value)
        elif q is not None and not q.ready:
            # Queue set-up registers are only written while the queue is not ready (4.2.3.2).
            if offset == R_QUEUE_NUM:
                q.size = value
            elif offset == R_QUEUE_READY:
                if value == 1:
                    try:
                        q.activate()
                    except VirtqueueError as e:
                        self.fail(str(e))
            else:
                for reg, attr, hi in ((R_QUEUE_DESC_LOW, "desc_addr", 0), (R_QUEUE_DESC_HIGH, "desc_addr", 1),
                                      (R_QUEUE_DRIVER_LOW, "avail_addr", 0), (R_QUEUE_DRIVER_HIGH, "avail_addr", 1),
                                      (R_QUEUE_DEVICE_LOW, "used_addr", 0), (R_QUEUE_DEVICE_HIGH, "used_addr", 1)):
                    if offset == reg:
                        old = getattr(q, attr)
                        mask = 0xFFFFFFFF << (32 * hi)
                        setattr(q, attr, (old & ~mask) | (value << (32 * hi)))
        elif q is not None and offset == R_QUEUE_READY and value == 0:
            q.ready = False

    def _ring_features(self) -> None:
        """The queues follow the negotiated ring features (final once FEATURES_OK is set)."""
        event_idx = bool(self.status & FEATURES_OK and self.driver_features & VIRTIO_RING_F_EVENT_IDX)
        for q in self.queues:
            q.event_idx = event_idx

    def _write_status(self, value: int) -> None:
        if value == 0:
            self._reset()
            return
        if value & FEATURES_OK and not self.status & FEATURES_OK:
            # 2.2: the driver may only accept features the device offered; VERSION_1 is required.
            if self.driver_features & ~self.backend.features or not self.driver_features & VIRTIO_F_VERSION_1:
                value &= ~FEATURES_OK
        was_ok = self.status & DRIVER_OK
        self.status = (value & ~DEVICE_NEEDS_RESET) | (self.status & DEVICE_NEEDS_RESET)
        self._ring_features()
        if self.status & DRIVER_OK and not was_ok and self.error is None:
            self.run_guarded(self.backend.activate, self)

    # -- snapshot ----------------------------------------------------------------
    # Whether interrupt_status may hold the used-buffer bit while edge-triggered
    # (virtio-pci's ISR keeps it until read, and an MSI-X driver never reads it).
    isr_keeps_used = False
    _STATE_KEYS = ("device_id", "status", "device_features_sel", "driver_features_sel", "driver_features",
                   "queue_sel", "interrupt_status", "config_generation", "error", "level", "queues", "backend")

    def state_name(self) -> str:
        """How a refusal of this transport's saved state names it."""
        return f"virtio-mmio@{self.base:#x}"

    def save_state(self) -> Dict:
        """The transport's registers, the error state, the interrupt's
        trigger type and line level (always low when edge-triggered), every
        queue (:meth:`Virtqueue.save_state`) and the backend's own state
        under "backend", with the backend's device id."""
        with self.lock:
            return {"version": STATE_VERSION, "trigger": self.trigger,
                    "device_id": self.backend.device_id, "status": self.status,
                    "device_features_sel": self.device_features_sel,
                    "driver_features_sel": self.driver_features_sel, "driver_features": self.driver_features,
                    "queue_sel": self.queue_sel, "interrupt_status": self.interrupt_status,
                    "config_generation": self.config_generation, "error": self.error, "level": self._level,
                    "queues": [q.save_state() for q in self.queues], "backend": self.backend.save_state()}

    def load_state(self, state: Dict) -> None:
        """Take a state from :meth:`save_state` into a freshly built transport
        with the same kind of backend. Everything is checked before anything
        changes; a high interrupt line is raised once so the interrupt
        controller (restored first) matches. The state's trigger type must
        be this transport's (a machine is built with the one its snapshot
        names: :func:`saved_trigger`)."""
        from .state import StateReader, restore_line

        what = self.state_name()
        r = StateReader(what, state, self._STATE_KEYS, ("trigger",), version=STATE_VERSION)
        trigger = saved_trigger(state)
        if trigger != self.trigger:
            raise r.fail(f"interrupt saved {trigger}-triggered, this device's is {self.trigger}-triggered")
        device_id = r.int("device_id", 0, 0xFFFFFFFF)
        if device_id != self.backend.device_id:
            raise r.fail(f"saved from a device with id {device_id}, this one is device {self.backend.device_id}")
        u32 = 0xFFFFFFFF
        fields: Dict[str, Any] = {"status": r.int("status", 0, u32), "device_features_sel": r.int("device_features_sel", 0, u32),
                  "driver_features_sel": r.int("driver_features_sel", 0, u32),
                  "driver_features": r.int("driver_features", 0, (1 << 64) - 1),
                  "queue_sel": r.int("queue_sel", 0, u32),
                  "interrupt_status": r.int("interrupt_status", 0, INT_USED_BUFFER | INT_CONFIG_CHANGE),
                  "config_generation": r.int("config_generation", 0, u32), "error": r.str("error", optional=True)}
        level = r.bool("level")
        if self.edge:
            if level or fields["interrupt_status"] & INT_USED_BUFFER and not self.isr_keeps_used:
                raise r.fail(f"line level {int(level)} and interrupt status {fields['interrupt_status']:#x}: "
                             "an edge-triggered device holds neither a line nor the used-buffer bit")
        elif level != bool(fields["interrupt_status"]):
            raise r.fail(f"line level {int(level)} does not match interrupt status {fields['interrupt_status']:#x}")
        if fields["driver_features"] & VIRTIO_RING_F_EVENT_IDX and not virtqueue.have_fence():
            raise r.fail("its driver uses VIRTIO_RING_F_EVENT_IDX, which needs atomic_thread_fence from "
                         "libatomic.so.1 on this host: install libatomic1")
        if (fields["error"] is not None) != bool(fields["status"] & DEVICE_NEEDS_RESET):
            raise r.fail(f"error {fields['error']!r} does not match status {fields['status']:#x} (DEVICE_NEEDS_RESET)")
        saved_queues = r.list("queues", len(self.queues))
        queues = [q.check_state(s, f"{what} queue {i}") for i, (q, s) in enumerate(zip(self.queues, saved_queues))]
        with self.lock:
            self.backend.load_state(r.dict("backend"))
            for name, value in fields.items():
                setattr(self, name, value)
            for q, attrs in zip(self.queues, queues):
                q.apply_state(attrs)
            self._ring_features()
            self.sync_page()
            was_high, self._level = self._level, level
            restore_line(self._raise_irq, was_high, level)

    # -- device tree -------------------------------------------------------------
    def dt_node(self) -> fdt.Node:
        return (fdt.Node(f"virtio_mmio@{self.base:x}")
                .prop("compatible", "virtio,mmio")
                .prop("reg", fdt.reg64((self.base, SIZE)))
                .prop("interrupts", fdt.irq(fdt.GIC_SPI, self.spi,
                                            fdt.IRQ_TYPE_EDGE_RISING if self.edge else fdt.IRQ_TYPE_LEVEL_HIGH))
                .prop("dma-coherent"))

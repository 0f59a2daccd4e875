"""The receiving side of a live migration (``pyvmm restore --incoming``).

:class:`Incoming` listens on the address for exactly one source (then stops
listening), reads its preamble and its STATE_CHECK (a snapshot without
memory), and refuses, with restore's own reasons, what this host cannot run
(:func:`pyvmm.snapshot.machine_snapshot.check`: vector lengths, SME, GIC,
CNTFRQ, PMU/pointer authentication, disks). :meth:`Incoming.build` is the
session's first build: the machine that will run the guest is built from
that state and the state loaded into it (vCPU ID registers, vector lengths,
vGIC and vCPU registers go through KVM, so a CPU this host cannot present is
refused too; no pending SError is injected), and ACCEPT is sent; then pages
are received straight into guest RAM, and the final STATE writes only what
differs from the state loaded. :meth:`Incoming.handover` answers READY,
waits for GO, lets the vCPUs run and answers RUNNING.

Whatever fails before GO (a refusal, a malformed frame, a source that dies
or goes silent) raises with the reason; the caller discards the machine.
"""
from __future__ import annotations

import socket
import time
from typing import Any, Callable, Dict, List, Optional

from ..errors import PyvmmError
from ..machine import Machine, MachineConfig
from ..memory import populate_mapping
from ..snapshot import format as fmt
from ..snapshot import machine_snapshot, schema, vcpu_state
from . import stream, taps
from .gc_hold import CollectorHold
from .transport import Conn, Listener, PeerError, parse

IO_TIMEOUT = 60.0


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000, 1)


class MigrationRefused(PyvmmError):
    """This host cannot run the incoming guest (the reason was sent to the source too)."""


def _vcpu_shape(snap: fmt.Snapshot):
    return [(v.get("index"), v.get("features"), v.get("sve_vls"), v.get("sme_vls")) for v in snap.manifest["vcpus"]]


def same_machine(first: fmt.Snapshot, final: fmt.Snapshot) -> Optional[str]:
    """Why the final state is not of the machine that was checked and built, or None."""
    a, b = first.manifest["machine"], final.manifest["machine"]
    for key in ("config", "sme_bit", "cntfrq", "memory"):
        if a.get(key) != b.get(key):
            return f"its {key} differs from the state checked at the start"
    if a["gic"]["model"] != b["gic"]["model"]:
        return "its interrupt controller differs from the state checked at the start"
    if _vcpu_shape(first) != _vcpu_shape(final):
        return "its vCPUs differ from the ones checked at the start"
    return None


class Incoming:
    """One incoming migration on ``dest`` (``unix:PATH`` or ``tcp:[HOST:]PORT``)."""

    def __init__(self, dest: str, io_timeout: float = IO_TIMEOUT):
        self.dest = parse(dest, listening=True)
        self.io_timeout = io_timeout
        self.listener: Optional[Listener] = Listener(self.dest)
        self.conn: Optional[Conn] = None
        self.page = 0
        self.first: Optional[fmt.Snapshot] = None
        self.pages_received = 0
        self.progress: Optional[Callable[[int], None]] = None
        self.first_pending = True  # no ACCEPT sent yet: a refusal is REFUSE, later an ABORT
        self.plans: List[vcpu_state.WritePlan] = []  # the vCPUs built from the first state
        self.cancelled = False
        # ms: where the destination's part went (first_*: before ACCEPT: the check, VM and RAM, vCPUs
        # and devices built, the first state loaded; the others: the pause)
        self.timing: Dict[str, float] = {}
        self._gc: Optional[CollectorHold] = None  # from ACCEPT until the guest runs here (pyvmm/migration/gc_hold.py)

    def __str__(self) -> str:
        return str(self.dest)

    def accept(self, timeout: Optional[float] = None) -> None:
        """Wait for the source (``timeout`` None: for ever), then stop
        listening and read its preamble."""
        assert self.listener is not None
        try:
            self.conn = self.listener.accept(timeout, self.io_timeout)
        finally:
            self.listener = None
        self.page = stream.parse_preamble(self._recv(stream.PREAMBLE_SIZE))

    def _recv(self, n: int) -> bytes:
        assert self.conn is not None
        return self.conn.recv_exact(n)

    def _frame(self, expect) -> stream.Frame:
        f = stream.read_frame(self._recv, self.page, expect)
        if f.type == stream.ABORT:
            raise PeerError(f"the source gave up: {stream.reason(f.payload)}")
        return f

    def refuse(self, why: str) -> None:
        """Tell the source (best effort) why this side stops, then let it
        finish what it was sending (so it reads the reason rather than a
        broken connection) for up to two seconds."""
        if self.conn is None:
            return
        try:
            self.conn.send(stream.frame(stream.REFUSE if self.first_pending else stream.ABORT,
                                        stream.reason_payload(why)))
        except PeerError:
            return
        self.conn.drain(2.0)

    def receive_check(self, kvm: Any, host: Any = None) -> MachineConfig:
        """The checked configuration of the incoming machine, its host
        resources chosen as restore chooses them (``host``: a
        :class:`pyvmm.snapshot.trust.HostChoice`)."""
        f = self._frame((stream.STATE_CHECK,))
        t0 = time.monotonic()
        try:
            snap = fmt.decode(f.payload, "migration state")
            config = machine_snapshot.check(kvm, snap, host)
        except PyvmmError as e:
            self.refuse(str(e))
            raise
        self.first = snap
        self.timing.update(first_check=_ms(t0, time.monotonic()))
        return config

    def build(self, m: Machine) -> None:
        """The session's first build (see the module docstring)."""
        assert self.first is not None and self.conn is not None
        try:
            # The machine that will run the guest is built once, now, and the
            # state to check loaded into it (KVM refuses here what it would
            # refuse at the end); the pause then writes only what changed.
            t0 = time.monotonic()
            m.hide_pauses = True
            m.share_taps = taps.same_host(self.conn.sock)  # the source's taps (pyvmm/migration/taps.py)
            m.create_vm()
            for r in m.mem.regions:
                if r.size % self.page:
                    raise MigrationRefused(f"guest RAM of {r.size} bytes is not a whole number of "
                                           f"{self.page}-byte migration pages")
            # vCPUs created, initialised, their ID registers written and vector
            # lengths finalised; the vGIC and the devices created; then the
            # whole state to check loaded, and every vGIC and vCPU register
            # read back (machine_snapshot.prepare_load).
            t1 = time.monotonic()
            self.plans = machine_snapshot.build_fixed(m, self.first, vm_created=True)
            t2 = time.monotonic()
            machine_snapshot.prepare_load(m, self.first, self.plans)
            self.timing.update(first_vm=_ms(t0, t1), first_build=_ms(t1, t2), first_load=_ms(t2, time.monotonic()))
            standby = taps.standby(m)  # the source's taps stay the source's until the state is here
        except PyvmmError as e:
            self.refuse(str(e))
            raise
        self.conn.send(stream.frame(stream.ACCEPT))
        self.first_pending = False
        # No cyclic collection in the source's pause: it would come at a
        # random moment of the last pages, the decode or the load.
        self._gc = CollectorHold()
        try:
            self._receive(m)
            taps.take_over(standby)
        except PeerError as e:
            if self.cancelled:
                raise PeerError("migration abandoned (interrupted); the guest runs on at the source") from None
            raise PeerError(f"the migration was not completed, the guest is not run here: {e.message}") from None
        except PyvmmError as e:
            self.refuse(str(e))
            raise

    def _receive(self, m: Machine) -> None:
        assert self.first is not None
        assert self.conn is not None
        slot_pages = {r.slot: r.size // self.page for r in m.mem.regions if not r.readonly}
        views = {r.slot: memoryview(r.mm) for r in m.mem.regions if not r.readonly}
        regions = {r.slot: r for r in m.mem.regions}
        page, conn = self.page, self.conn

        def populate(slot: int, first: int, n: int) -> None:
            # The run's pages allocated in one call, not one write fault each
            # while they are received (measured in the test machine: 2.9 ms
            # per MiB received into fresh RAM, 1.4 with this).
            populate_mapping(regions[slot], first * page, n * page)
        try:
            while True:
                ftype, length = stream.parse_header(self._recv(stream.FRAME_HEADER_SIZE), page,
                                                    (stream.PAGES, stream.STATE))
                if ftype == stream.PAGES:
                    # Received straight into guest RAM, its head checked first (stream.read_pages_into).
                    _, indices = stream.read_pages_into(self._recv, conn.recv_into, length, slot_pages, page,
                                                        views.__getitem__, populate)
                    self.pages_received += len(indices)
                    if self.progress is not None:
                        self.progress(self.pages_received)
                    continue
                payload = bytes(self._recv(length))
                if ftype == stream.ABORT:
                    raise PeerError(f"the source gave up: {stream.reason(payload)}")
                break
        finally:
            for v in views.values():
                v.release()  # the region's mmap can be closed (a view left would keep it from closing)
        t0 = time.monotonic()
        final = fmt.decode(payload, "migration state")
        t1 = time.monotonic()
        schema.check(final)
        why = same_machine(self.first, final)
        if why:
            raise stream.StreamError(f"the final migration state is not the machine checked: {why}")
        t2 = time.monotonic()
        machine_snapshot.load_state(m, final, "hide", self.plans, timing=self.timing)
        t3 = time.monotonic()
        machine_snapshot.finish_restore(m)
        self.timing.update(decode=_ms(t0, t1), check=_ms(t1, t2), load=_ms(t2, t3),
                           finish=_ms(t3, time.monotonic()))

    def handover(self, resume: Callable[[], None]) -> None:
        """READY, wait for GO, ``resume()`` the vCPUs, RUNNING."""
        assert self.conn is not None
        t0 = time.monotonic()
        self.conn.send(stream.frame(stream.READY))
        try:
            self._frame((stream.GO,))
        except PeerError:
            if self.cancelled:
                raise PeerError("migration abandoned (interrupted); the guest runs on at the source") from None
            raise
        t1 = time.monotonic()
        resume()
        t2 = time.monotonic()
        try:
            self.conn.send(stream.frame(stream.RUNNING))
        except PeerError:
            pass  # the guest runs here now; the source learns it or stops on its own
        self.timing.update(wait_go=_ms(t0, t1), resume=_ms(t1, t2))
        self._release_gc()

    def _release_gc(self) -> None:
        if self._gc is not None:
            self._gc.release()
            self._gc = None

    def cancel(self) -> None:
        """Abandon the migration from another thread or a signal handler:
        the connection is shut down, so whatever waits on it fails at once
        and the source resumes its guest (nothing runs here)."""
        self.cancelled = True
        conn = self.conn
        if conn is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._release_gc()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

